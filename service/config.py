"""Settings, parsed once from the environment (the CLI's flags override them).

Each setting is a dataclass field whose default is written once, in the field; `from_env` reads
the variables that are set, each through a typed parser, and a bad value is a ConfigError naming
the variable and the value (one line on the command line, no traceback).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .guest_args import parse_template
from .wasm.call import GuestLimits

DEFAULT_STORE_DIR = Path(".classifier")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number (0-65535)")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise ValueError("must be more than 0")
    return value


def _log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}")
    return text


LOG_FORMATS = ("text", "json")


def _on_off(text: str) -> bool:
    if text.lower() not in ("on", "off"):
        raise ValueError("must be on or off")
    return text.lower() == "on"


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _read(
    env: Mapping[str, str], variables: Mapping[str, tuple[str, Callable[[str], Any]]]
) -> dict[str, Any]:
    """{field: parsed value} for every variable that is set (and not empty)."""
    values: dict[str, Any] = {}
    for name, (variable, parse) in variables.items():
        text = env.get(variable, "").strip()
        if not text:
            continue
        try:
            values[name] = parse(text)
        except ValueError as exc:
            reason = str(exc) if not str(exc).startswith(("invalid literal", "could not convert")) else ""
            raise ConfigError(variable, text, reason or "not a number") from None
    return values


@dataclass(frozen=True)
class Settings:
    store_dir: Path = DEFAULT_STORE_DIR
    cache_dir: Path | None = None  # compiled guests and fetched models; default: <store_dir>/cache
    guest: Path | None = None  # business-logic guest; default: the embedded classify.wasm
    guest_args: tuple[str, ...] | None = None  # `guest`'s args template if command-style (guest_args.py)
    interpreter_threads: int = 1  # LiteRT threads per interpreter (workers = cores: 1 is best)
    limits: GuestLimits = field(default_factory=GuestLimits)

    @property
    def module_cache_dir(self) -> Path:
        return self.cache_dir or self.store_dir / "cache"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values = _read(
            env,
            {
                "store_dir": ("CLASSIFIER_STORE", Path),
                "cache_dir": ("CLASSIFIER_CACHE_DIR", Path),
                "guest": ("CLASSIFIER_GUEST", _guest_file),
                "interpreter_threads": ("CLASSIFIER_INTERPRETER_THREADS", _positive_int),
            },
        )
        if env.get("CLASSIFIER_GUEST_ARGS") is not None:
            values["guest_args"] = parse_template(env["CLASSIFIER_GUEST_ARGS"])
        limits = _read(
            env,
            {
                "timeout_s": ("CLASSIFIER_TIMEOUT_S", _positive_float),
                "memory_bytes": ("CLASSIFIER_MAX_MEMORY_MB", lambda t: _positive_int(t) << 20),
                "output_bytes": ("CLASSIFIER_MAX_OUTPUT_KB", lambda t: _positive_int(t) << 10),
                "max_image_pixels": ("CLASSIFIER_MAX_IMAGE_PIXELS", _positive_int),
            },
        )
        return cls(**values, limits=replace(GuestLimits(), **limits))


def _guest_file(text: str) -> Path | None:
    """CLASSIFIER_GUEST names a .wasm file (Settings) or a guest in the store (ServeSettings)."""
    return Path(text) if text.endswith(".wasm") else None


def _stored_guest_name(text: str) -> str | None:
    return None if text.endswith(".wasm") else text


@dataclass(frozen=True)
class ServeSettings:
    """How `classifier serve` meets its sidecar. Names follow Dapr's where Dapr has one."""

    port: int = 50051  # APP_PORT: `dapr run` sets it; the SDK does not read it
    listen_address: str = "127.0.0.1"  # only the sidecar calls the app
    max_message_bytes: int = 16 << 20  # match `maxBodySize` in dapr.yaml
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    dapr: bool = False  # DAPR_GRPC_PORT set: models and guests come from the Dapr state store
    state_store: str = "statestore"
    pubsub: str = "pubsub"
    images_topic: str = "images"
    results_topic: str = "classifications"
    dead_letter_topic: str = "images-deadletter"
    updates_topic: str = "model-updates"
    # Updates must reach every replica: a component of their own whose consumer group is
    # per daprd (components/updates.yaml), not `pubsub`'s group shared by one app id.
    updates_pubsub: str = "updates"
    models: tuple[str, ...] = ()  # load these at start and report healthy once they are; () = all
    default_model: str | None = None  # for requests that name none; default: the only model
    guest_name: str | None = None  # CLASSIFIER_GUEST naming a guest in the store (a .wasm path is Settings')
    poll_s: float = 10.0  # how often to look for new model and guest versions
    shutdown_grace_s: float = 10.0  # SIGTERM: time for in-flight calls to finish
    app_api_token: str | None = None  # APP_API_TOKEN: calls must carry it as dapr-api-token
    image_url_allowlist: tuple[str, ...] = ()
    metrics_port: int = 9464  # Prometheus /metrics on listen_address; 0: off
    log_format: str = "text"  # or "json": one JSON object per line
    # Image events in batches (Dapr bulk subscribe, docs/streams.md): on or off, the most
    # entries in a batch and how long daprd waits to fill one. Off by default: daprd 1.18's
    # bulk delivery leaves out the data of binary (data_base64) events, so only JSON gets through.
    bulk_subscribe: bool = False
    bulk_max_messages: int = 32
    bulk_max_await_ms: int = 20
    max_inflight_events_setting: int | None = None  # None: 2 x workers (max_inflight_events)

    @property
    def max_inflight_events(self) -> int:
        """Image events handled at once (single or in batches); more wait for a place."""
        return self.max_inflight_events_setting or 2 * self.workers

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeSettings:
        env = os.environ if env is None else env
        values = _read(
            env,
            {
                "port": ("APP_PORT", _port),
                "listen_address": ("CLASSIFIER_LISTEN_ADDRESS", str),
                "max_message_bytes": ("CLASSIFIER_MAX_MESSAGE_MB", lambda t: _positive_int(t) << 20),
                "workers": ("CLASSIFIER_WORKERS", _positive_int),
                "state_store": ("CLASSIFIER_STATE_STORE", str),
                "pubsub": ("CLASSIFIER_PUBSUB", str),
                "images_topic": ("CLASSIFIER_IMAGES_TOPIC", str),
                "results_topic": ("CLASSIFIER_RESULTS_TOPIC", str),
                "dead_letter_topic": ("CLASSIFIER_DEAD_LETTER_TOPIC", str),
                "updates_topic": ("CLASSIFIER_UPDATES_TOPIC", str),
                "updates_pubsub": ("CLASSIFIER_UPDATES_PUBSUB", str),
                "models": ("CLASSIFIER_MODELS", _names),
                "default_model": ("CLASSIFIER_DEFAULT_MODEL", str),
                "guest_name": ("CLASSIFIER_GUEST", _stored_guest_name),
                "poll_s": ("CLASSIFIER_POLL_S", _positive_float),
                "shutdown_grace_s": ("CLASSIFIER_SHUTDOWN_GRACE_S", _non_negative_float),
                "app_api_token": ("APP_API_TOKEN", str),
                "image_url_allowlist": ("CLASSIFIER_IMAGE_URL_ALLOWLIST", _names),
                "metrics_port": ("CLASSIFIER_METRICS_PORT", _port),
                "log_format": ("CLASSIFIER_LOG_FORMAT", _log_format),
                "bulk_subscribe": ("CLASSIFIER_BULK_SUBSCRIBE", _on_off),
                "bulk_max_messages": ("CLASSIFIER_BULK_MAX_MESSAGES", _positive_int),
                "bulk_max_await_ms": ("CLASSIFIER_BULK_MAX_AWAIT_MS", _positive_int),
                "max_inflight_events_setting": ("CLASSIFIER_MAX_INFLIGHT_EVENTS", _positive_int),
            },
        )
        values["dapr"] = bool(env.get("DAPR_GRPC_PORT") or env.get("DAPR_GRPC_ENDPOINT"))
        return cls(**values)
