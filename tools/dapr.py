"""Real Dapr for development and CI: daprd and the Dapr CLI built from their Go modules, and Redis.

    python -m tools.dapr install   # build (or reuse) daprd and the CLI; install redis-server if missing
    python -m tools.dapr env       # the exports that put them on PATH, for a shell: eval "$(...)"
    python -m tools.dapr path      # the folder holding bin/daprd and bin/dapr

Both are built from the Go module proxy (the only source these machines reach) into a
cache folder keyed by the versions and the hashes of `tools/daprd` and `tools/dapr-cli`, so a
warm machine skips the build. The folder is laid out as `dapr init --slim` lays out `~/.dapr`:
`DAPR_RUNTIME_PATH=<cache>` makes `dapr run` find `<cache>/.dapr/bin/daprd`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DAPR_RUNTIME_VERSION = "1.18.3"
DAPR_CLI_VERSION = "1.16.5"

TOOLS = Path(__file__).resolve().parent
DAPRD_MODULE = TOOLS / "daprd"
CLI_MODULE = TOOLS / "dapr-cli"


class InstallError(Exception):
    """A step of the install failed; the message says which and why, in one line."""


@dataclass(frozen=True)
class DaprInstall:
    runtime_path: Path  # DAPR_RUNTIME_PATH: holds .dapr/bin/{daprd,dapr}

    @property
    def bin_dir(self) -> Path:
        return self.runtime_path / ".dapr" / "bin"

    @property
    def daprd(self) -> Path:
        return self.bin_dir / "daprd"

    @property
    def dapr(self) -> Path:
        return self.bin_dir / "dapr"

    def env(self) -> dict[str, str]:
        """Environment for running `dapr` and `daprd` from this install."""
        return {
            "DAPR_RUNTIME_PATH": str(self.runtime_path),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dapr-wasm-classifier" / "dapr"


def _key() -> str:
    digest = hashlib.sha256(f"{DAPR_RUNTIME_VERSION} {DAPR_CLI_VERSION}".encode())
    for module in (DAPRD_MODULE, CLI_MODULE):
        for file in sorted(module.iterdir()):
            if file.is_file():
                digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return f"{DAPR_RUNTIME_VERSION}-{DAPR_CLI_VERSION}-{digest.hexdigest()[:12]}"


def install_path() -> DaprInstall:
    return DaprInstall(cache_root() / _key())


def _go(args: list[str], cwd: Path, log: Path) -> str:
    go = shutil.which("go")
    if go is None:
        raise InstallError("go is not on PATH: daprd and the Dapr CLI are built from their Go modules")
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    with log.open("a") as out:
        out.write(f"$ go {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([go, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=out, text=True)
    if done.returncode != 0:
        lines = [line for line in log.read_text().splitlines() if line and "downloading" not in line]
        raise InstallError(
            f"go {args[0]} failed in {cwd.name}: {lines[-1] if lines else 'no output'} (log: {log})"
        )
    return done.stdout.strip()


def _build_daprd(out: Path, work: Path, log: Path) -> None:
    """The released runtime, with only the components tools/daprd/main.go registers.

    cmd/daprd/app imports cmd/daprd/components, whose files register components under the
    `allcomponents`/`stablecomponents` tags, and whose zz_notag.go panics without them. The Go
    tool refuses to overlay files in the module cache, so the runtime is built from a copy of its
    released module source in which that one file is an empty package clause.
    """
    build = work / "daprd"
    shutil.copytree(DAPRD_MODULE, build)
    module = f"github.com/dapr/dapr@v{DAPR_RUNTIME_VERSION}"
    source = Path(_go(["mod", "download", "-json", module], build, log).split('"Dir": "')[1].split('"')[0])
    runtime = build / "runtime"
    shutil.copytree(source, runtime)
    for path in runtime.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    (runtime / "cmd" / "daprd" / "components" / "zz_notag.go").write_text("package components\n")
    _go(["mod", "edit", "-replace", "github.com/dapr/dapr=./runtime"], build, log)
    ldflags = f"-s -w -X github.com/dapr/dapr/pkg/buildinfo.version={DAPR_RUNTIME_VERSION}"
    _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(out), "."], build, log)


def _build_cli(out: Path, work: Path, log: Path) -> None:
    build = work / "dapr-cli"
    shutil.copytree(CLI_MODULE, build)
    ldflags = f"-s -w -X main.version={DAPR_CLI_VERSION} -X main.apiVersion=1.0"
    # The CLI's binary is named `cli`; we name it `dapr`.
    _go(["build", "-trimpath", "-ldflags", ldflags, "-o", str(out), "github.com/dapr/cli"], build, log)


def apt_install(package: str) -> None:
    """`apt-get update` then `apt-get install` of one Debian package (as root); InstallError with
    apt's last line if either fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()
            raise InstallError(f"{' '.join(cmd)} failed: {tail[-1] if tail else done.returncode}")


def ensure_redis() -> Path:
    """redis-server from Debian's packages (installing it needs root)."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    if os.geteuid() != 0:
        raise InstallError("redis-server is missing: run `apt-get install -y redis-server` as root")
    print("installing redis-server from Debian's packages", file=sys.stderr)
    apt_install("redis-server")
    found = shutil.which("redis-server")
    if not found:
        raise InstallError("redis-server is still not on PATH after apt-get install")
    return Path(found)


def install(*, redis: bool = True) -> DaprInstall:
    """Build daprd and the CLI unless the cache has this exact build; a no-op when warm."""
    target = install_path()
    if redis:
        ensure_redis()
    if target.daprd.exists() and target.dapr.exists():
        return target
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root(), prefix="build-") as tmp:
        work = Path(tmp)
        staged = DaprInstall(work / "home")
        staged.bin_dir.mkdir(parents=True)
        (staged.runtime_path / ".dapr" / "components").mkdir()
        # `dapr run` reads a default config when given none; an empty one (no tracing, no mTLS).
        (staged.runtime_path / ".dapr" / "config.yaml").write_text(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprConfig\nspec: {}\n"
        )
        log = cache_root() / f"build-{target.runtime_path.name}.log"
        log.write_text("")
        print(
            f"building daprd {DAPR_RUNTIME_VERSION} and the Dapr CLI {DAPR_CLI_VERSION} (log: {log})",
            file=sys.stderr,
        )
        _build_daprd(staged.daprd, work, log)
        _build_cli(staged.dapr, work, log)
        if target.runtime_path.exists():
            shutil.rmtree(target.runtime_path)
        staged.runtime_path.rename(target.runtime_path)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dapr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="build daprd and the CLI (cached), install redis-server if missing")
    sub.add_parser("env", help="print the exports that put daprd and dapr on PATH")
    sub.add_parser("path", help="print DAPR_RUNTIME_PATH of the install")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            done = install()
            print(f"daprd {DAPR_RUNTIME_VERSION}: {done.daprd}")
            print(f"dapr (CLI {DAPR_CLI_VERSION}): {done.dapr}")
            print(f"redis-server: {ensure_redis()}")
        elif args.command == "env":
            for name, value in install(redis=False).env().items():
                print(f"export {name}={value}")
        else:
            print(install_path().runtime_path)
    except InstallError as exc:
        print(f"tools.dapr: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
