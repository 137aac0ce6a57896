"""`classifier serve`'s log: text lines (the default) or JSON lines (CLASSIFIER_LOG_FORMAT=json).

Every request gets one INFO line, `request_line`, with its fields also given to the formatter
(`extra={"request": {...}}`): the JSON format writes them as keys of their own, so a log
pipeline reads model, version, outcome, duration and trace id without parsing text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def say_waiting(line: str) -> None:
    """A command's progress line on stderr for a person waiting (not the serve log), in one
    write with its newline: print() writes the end apart, and a Ctrl-C between the two left the
    "interrupted" line glued to this one."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the request's
    fields if any, and the traceback (as one string) of a logged exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(log_format: str) -> None:
    """The root logger's handler on stderr, in the given format ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def request_line(fields: dict[str, Any]) -> str:
    """The text of a request's line: `key=value` pairs in their order, a value with spaces or
    quotes as a JSON string; empty ones left out."""
    return " ".join(f"{key}={_text(value)}" for key, value in fields.items() if value not in (None, ""))


def _text(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if " " in text or '"' in text or "=" in text else text
