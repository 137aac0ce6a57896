"""Class labels: from a text file, or from the label file a TFLite model carries in its metadata.

Models with TFLite metadata append their associated files as a zip archive, so the
standard zipfile module reads them without the metadata schema.
"""

from __future__ import annotations

import io
import zipfile


def parse_labels(text: str) -> list[str]:
    """One label per line; trailing blank lines are dropped."""
    labels = [line.rstrip("\r") for line in text.split("\n")]
    while labels and not labels[-1].strip():
        labels.pop()
    return labels


def labels_from_metadata(model: bytes, num_classes: int) -> list[str] | None:
    """The model's own label file, if it has one with one line per class.

    When several fit (e.g. machine ids and English names), English display names
    (`*-en.txt`) win, then the first in the archive.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(model))
    except zipfile.BadZipFile:
        return None
    candidates: list[tuple[str, list[str]]] = []
    with archive:
        for name in archive.namelist():
            if not name.lower().endswith(".txt"):
                continue
            try:
                labels = parse_labels(archive.read(name).decode("utf-8"))
            except (UnicodeDecodeError, zipfile.BadZipFile, OSError):
                continue
            if len(labels) == num_classes:
                candidates.append((name, labels))
    if not candidates:
        return None
    english = [c for c in candidates if c[0].lower().endswith("-en.txt")]
    return (english or candidates)[0][1]
