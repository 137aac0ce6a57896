"""Settings, from the environment (the CLI's flags override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .guest_args import parse_template
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
    guest_args: tuple[str, ...] | None = None  # `guest`'s args template if command-style (guest_args.py)
    interpreter_threads: int = 1  # LiteRT threads per interpreter (workers = cores: 1 is best)
    limits: GuestLimits = field(default_factory=GuestLimits)

    @property
    def module_cache_dir(self) -> Path:
        return self.cache_dir or self.store_dir / "cache"

    @classmethod
    def from_env(cls) -> Settings:
        guest = os.environ.get("CLASSIFIER_GUEST")
        cache = os.environ.get("CLASSIFIER_CACHE_DIR")
        guest_args = os.environ.get("CLASSIFIER_GUEST_ARGS")
        return cls(
            store_dir=Path(os.environ.get("CLASSIFIER_STORE") or DEFAULT_STORE_DIR),
            cache_dir=Path(cache) if cache else None,
            guest=Path(guest) if guest and guest.endswith(".wasm") else None,  # else a stored guest's name
            guest_args=parse_template(guest_args) if guest_args is not None else None,
            interpreter_threads=_env_int("CLASSIFIER_INTERPRETER_THREADS", 1),
            limits=GuestLimits(
                timeout_s=_env_float("CLASSIFIER_TIMEOUT_S", 10.0),
                memory_bytes=_env_int("CLASSIFIER_MAX_MEMORY_MB", 256) << 20,
                output_bytes=_env_int("CLASSIFIER_MAX_OUTPUT_KB", 1024) << 10,
                max_image_pixels=_env_int("CLASSIFIER_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS),
            ),
        )


def _env_list(name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


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

    @classmethod
    def from_env(cls) -> ServeSettings:
        return cls(
            port=_env_int("APP_PORT", 50051),
            listen_address=os.environ.get("CLASSIFIER_LISTEN_ADDRESS") or "127.0.0.1",
            max_message_bytes=_env_int("CLASSIFIER_MAX_MESSAGE_MB", 16) << 20,
            workers=_env_int("CLASSIFIER_WORKERS", os.cpu_count() or 2),
            dapr=bool(os.environ.get("DAPR_GRPC_PORT") or os.environ.get("DAPR_GRPC_ENDPOINT")),
            state_store=os.environ.get("CLASSIFIER_STATE_STORE") or "statestore",
            pubsub=os.environ.get("CLASSIFIER_PUBSUB") or "pubsub",
            images_topic=os.environ.get("CLASSIFIER_IMAGES_TOPIC") or "images",
            results_topic=os.environ.get("CLASSIFIER_RESULTS_TOPIC") or "classifications",
            dead_letter_topic=os.environ.get("CLASSIFIER_DEAD_LETTER_TOPIC") or "images-deadletter",
            updates_topic=os.environ.get("CLASSIFIER_UPDATES_TOPIC") or "model-updates",
            updates_pubsub=os.environ.get("CLASSIFIER_UPDATES_PUBSUB") or "updates",
            models=_env_list("CLASSIFIER_MODELS"),
            default_model=os.environ.get("CLASSIFIER_DEFAULT_MODEL") or None,
            guest_name=_stored_guest_name(os.environ.get("CLASSIFIER_GUEST")),
            poll_s=_env_float("CLASSIFIER_POLL_S", 10.0),
            shutdown_grace_s=_env_float("CLASSIFIER_SHUTDOWN_GRACE_S", 10.0),
            app_api_token=os.environ.get("APP_API_TOKEN") or None,
            image_url_allowlist=_env_list("CLASSIFIER_IMAGE_URL_ALLOWLIST"),
        )


def _stored_guest_name(value: str | None) -> str | None:
    return value if value and not value.endswith(".wasm") else None
