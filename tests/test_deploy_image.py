"""The container image's install steps, run for real: deploy/image/install.sh in a clean venv, on a
build context made as `docker build` makes it (the Dockerfile's COPY sources, filtered by
.dockerignore), then the installed `classifier` classifies and serves with the guest compiled at
install time, compiling nothing more. No Docker engine runs here; the Dockerfile's other lines
are read and checked against what the manifests and the service expect."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import IMAGES, MODELS, ROOT

DOCKERFILE = ROOT / "Dockerfile"
INSTALL_TIMEOUT_S = 900  # a clean venv: pip resolves and installs every dependency (wheels cached)


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), grouped by stage."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def dockerignore_admits(relative: str) -> bool:
    """.dockerignore's rules as docker applies them: the last matching pattern wins; a pattern
    matches a path or any of its parents."""
    admitted = True
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            matched = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            matched = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if matched:
            admitted = negate
    return admitted


def build_context(target: Path) -> None:
    """Copy the tracked files that .dockerignore lets into the build context."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for relative in tracked:
        if dockerignore_admits(relative) and (ROOT / relative).is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / relative, target / relative)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without this checkout's venv: the script must bring its own."""
    venv = os.environ.get("VIRTUAL_ENV")
    path = [p for p in os.environ["PATH"].split(os.pathsep) if not venv or not p.startswith(venv)]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "DAPR_GRPC_PORT")}
    env["PATH"] = os.pathsep.join(path)
    env.update(extra)
    return env


def test_dockerfile_runs_the_install_script_and_runs_serve_as_non_root() -> None:
    build, final = dockerfile_stages()
    runs = [args for instruction, args in build if instruction == "RUN"]
    assert runs == ["sh deploy/image/install.sh /opt/classifier /var/cache/classifier"]
    final_args = dict(final)
    assert final_args["ENTRYPOINT"] == '["classifier", "serve"]'
    user = final_args["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0  # numeric: runAsNonRoot can check it
    assert final_args["EXPOSE"].split() == ["50051", "9464"]
    env = dict(re.findall(r"(\w+)=(\S+)", final_args["ENV"]))
    assert env["APP_PORT"] == "50051"
    assert env["CLASSIFIER_METRICS_PORT"] == "9464"
    assert env["CLASSIFIER_CACHE_DIR"] == "/var/cache/classifier"
    assert json.loads(final_args["VOLUME"]) == [env["CLASSIFIER_CACHE_DIR"]]
    # The runtime stage takes the venv and the compiled guest from the build stage, nothing else.
    copies = [args for instruction, args in final if instruction == "COPY"]
    assert copies == [
        "--from=build /opt/classifier /opt/classifier",
        "--from=build --chown=10001:10001 /var/cache/classifier /var/cache/classifier",
    ]
    assert final_args["USER"] == "10001:10001"


def test_every_copy_source_is_in_the_build_context() -> None:
    build, _ = dockerfile_stages()
    sources = [args.split()[:-1] for instruction, args in build if instruction == "COPY"]
    for source in (s for group in sources for s in group):
        assert (ROOT / source).exists(), source
        assert dockerignore_admits(source), f"{source} is copied but .dockerignore leaves it out"
    assert not dockerignore_admits(".venv/bin/python")
    assert not dockerignore_admits(".git/HEAD")
    assert not dockerignore_admits("service/__pycache__/cli.cpython-311.pyc")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """deploy/image/install.sh run as the Dockerfile runs it: (venv, cache dir)."""
    work = tmp_path_factory.mktemp("image")
    context = work / "context"
    build_context(context)
    prefix, cache = work / "opt-classifier", work / "var-cache-classifier"
    result = subprocess.run(
        ["sh", "deploy/image/install.sh", str(prefix), str(cache)],
        cwd=context,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("compiled the default guest "), result.stdout
    return prefix, cache


def test_installed_classifier_is_not_this_checkout(installed: tuple[Path, Path], tmp_path: Path) -> None:
    prefix, _ = installed
    where = subprocess.run(
        [str(prefix / "bin" / "python"), "-c", "import service; print(service.__file__)"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(prefix), where


def test_installed_classifier_classifies_and_serves_on_the_precompiled_guest(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    prefix, cache = installed
    compiled = sorted(cache.glob("*.cwasm"))
    assert len(compiled) == 1
    before = {path.name: path.stat().st_mtime_ns for path in cache.iterdir()}
    classifier = str(prefix / "bin" / "classifier")
    env = clean_env(CLASSIFIER_CACHE_DIR=str(cache), CLASSIFIER_STORE=str(tmp_path / "store"))
    model = MODELS / "aiy_birds_v1"
    labels = model / "labels.txt"
    subprocess.run(
        [classifier, "models", "put", "birds", str(model / "model.tflite"), "--labels", str(labels)],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = IMAGES / "classify" / "bird.jpg"
    classified = subprocess.run(
        [classifier, "classify", str(image), "--model", "birds", "--top-k", "1", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert classified.returncode == 0, classified.stderr
    assert json.loads(classified.stdout)["predictions"][0]["label"] == "Aix galericulata"
    # The entrypoint: `classifier serve`, driven as daprd drives it (the demo starts serve).
    demo = subprocess.run(
        [classifier, "demo", str(image), "--model", "birds", "--top-k", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert demo.returncode == 0, demo.stderr
    assert "Aix galericulata" in demo.stdout
    assert "stopped on SIGTERM with exit code 0" in demo.stdout
    # Neither compiled the guest again: the key install.sh wrote is the one serve reads.
    after = {path.name: path.stat().st_mtime_ns for path in cache.iterdir() if path.suffix == ".cwasm"}
    assert after == {name: mtime for name, mtime in before.items() if name.endswith(".cwasm")}


def test_precompile_usage_error_is_one_line(installed: tuple[Path, Path], tmp_path: Path) -> None:
    prefix, _ = installed
    result = subprocess.run(
        [str(prefix / "bin" / "python"), str(ROOT / "deploy" / "image" / "precompile.py")],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr == "usage: precompile.py CACHE_DIR\n"
