"""Settings, from the environment (the CLI's flags override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .imaging import DEFAULT_MAX_PIXELS
from .wasm.call import GuestLimits

DEFAULT_STORE_DIR = Path(".classifier")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass(frozen=True)
class Settings:
    store_dir: Path = DEFAULT_STORE_DIR
    cache_dir: Path | None = None  # compiled guests; default: <store_dir>/cache
    guest: Path | None = None  # business-logic guest; default: the embedded classify.wasm
    interpreter_threads: int = 1  # LiteRT threads per interpreter (workers = cores: 1 is best)
    limits: GuestLimits = field(default_factory=GuestLimits)

    @property
    def module_cache_dir(self) -> Path:
        return self.cache_dir or self.store_dir / "cache"

    @classmethod
    def from_env(cls) -> Settings:
        guest = os.environ.get("CLASSIFIER_GUEST")
        cache = os.environ.get("CLASSIFIER_CACHE_DIR")
        return cls(
            store_dir=Path(os.environ.get("CLASSIFIER_STORE") or DEFAULT_STORE_DIR),
            cache_dir=Path(cache) if cache else None,
            guest=Path(guest) if guest else None,
            interpreter_threads=_env_int("CLASSIFIER_INTERPRETER_THREADS", 1),
            limits=GuestLimits(
                timeout_s=_env_float("CLASSIFIER_TIMEOUT_S", 10.0),
                memory_bytes=_env_int("CLASSIFIER_MAX_MEMORY_MB", 256) << 20,
                output_bytes=_env_int("CLASSIFIER_MAX_OUTPUT_KB", 1024) << 10,
                max_image_pixels=_env_int("CLASSIFIER_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS),
            ),
        )
