"""Compile the default guest into the compiled-guest cache, as `classifier serve` would on its
first start (deploy/image/install.sh runs it at image build time).

    python deploy/image/precompile.py CACHE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from service.config import Settings
from service.default_guest import guest_bytes
from service.wasm.host import WasmHost


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: precompile.py CACHE_DIR", file=sys.stderr)
        return 2
    # The path serve uses for its compiled guests when CLASSIFIER_CACHE_DIR is CACHE_DIR.
    cache_dir = Settings(cache_dir=Path(argv[0])).module_cache_dir
    host = WasmHost(cache_dir)
    try:
        guest = host.load_guest(guest_bytes(), "classify")
    finally:
        host.close()
    print(f"compiled the default guest {guest.digest[:12]} into {cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
