"""A real browser for the UI tests: Chromium from Debian's packages, driven by Playwright.

    python -m tools.browser install   # apt-get install chromium if it is missing (as root); else a no-op
    python -m tools.browser path      # the chromium executable the tests launch

Playwright's own browser download does not work on these machines; the tests launch Debian's
chromium with `executable_path` instead (CHROMIUM overrides the path).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools.dapr import InstallError as DaprInstallError
from tools.dapr import apt_install

DEFAULT_CHROMIUM = Path("/usr/bin/chromium")


class InstallError(Exception):
    """The install failed; the message says why, in one line."""


def chromium_path() -> Path:
    return Path(os.environ.get("CHROMIUM") or DEFAULT_CHROMIUM)


def install() -> Path:
    """Debian's chromium, installed with apt-get if it is missing; its path."""
    path = chromium_path()
    if path.exists():
        return path
    if os.environ.get("CHROMIUM"):
        raise InstallError(f"CHROMIUM={path} does not exist")
    if shutil.which("apt-get") is None:
        raise InstallError(f"{path} is missing and there is no apt-get: install Chromium, or set CHROMIUM")
    if os.geteuid() != 0:
        raise InstallError(f"{path} is missing: run `apt-get install -y chromium` as root")
    print("installing chromium from Debian's packages (a few minutes)", file=sys.stderr)
    try:
        apt_install("chromium")
    except DaprInstallError as exc:
        raise InstallError(str(exc)) from None
    if not path.exists():
        raise InstallError(f"{path} is still missing after apt-get install chromium")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.browser", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install Debian's chromium if it is missing (needs root)")
    sub.add_parser("path", help="print the chromium executable the tests launch")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(chromium_path())
        return 0
    try:
        path = install()
    except InstallError as exc:
        print(f"tools.browser: {exc}", file=sys.stderr)
        return 1
    version = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"{version or 'chromium'}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
