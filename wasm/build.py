"""Compile C guests to wasm32-wasi with zig (the `ziglang` PyPI package).

    python wasm/build.py            # rebuild wasm/src/*.c into wasm/bin/*.wasm
    python wasm/build.py --check    # rebuild into a temp dir; fail if wasm/bin differs
    python wasm/build.py --out DIR a.c b.c   # build other guests (tests use this)

Builds are stripped, so the bytes depend only on the source and the pinned zig
version: CI rebuilds the committed guests and checks they match.
"""

from __future__ import annotations

import argparse
import filecmp
import subprocess
import sys
import tempfile
from pathlib import Path

WASM_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = WASM_DIR / "include"
SOURCE_DIR = WASM_DIR / "src"
BIN_DIR = WASM_DIR / "bin"

CFLAGS = [
    "-target",
    "wasm32-wasi",
    "-O2",
    "-s",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,-z,stack-size=1048576",  # 1 MiB stack (zig defaults to 16 MiB): a smaller memory per run
]


def compile_guest(source: Path, output: Path) -> Path:
    """Compile one C source file into a WASI command module."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "ziglang",
        "cc",
        *CFLAGS,
        "-I",
        str(INCLUDE_DIR),
        "-o",
        str(output),
        str(source),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"compiling {source.name} failed:\n{result.stderr}")
    return output


def build_all(sources: list[Path], out_dir: Path) -> list[Path]:
    return [compile_guest(src, out_dir / f"{src.stem}.wasm") for src in sources]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path, help="C files (default: wasm/src/*.c)")
    parser.add_argument("--out", type=Path, default=BIN_DIR, help="output directory")
    parser.add_argument(
        "--check", action="store_true", help="rebuild into a temp dir and compare with the committed guests"
    )
    args = parser.parse_args(argv)
    sources = args.sources or sorted(SOURCE_DIR.glob("*.c"))

    if not args.check:
        for built in build_all(sources, args.out):
            print(f"built {built}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        stale = [
            built.name
            for built in build_all(sources, Path(tmp))
            if not (args.out / built.name).exists()
            or not filecmp.cmp(built, args.out / built.name, shallow=False)
        ]
    if stale:
        print(f"out of date: {', '.join(stale)}; run `python wasm/build.py` and commit", file=sys.stderr)
        return 1
    print(f"{len(sources)} guest(s) match their sources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
