"""The commands' wait for their Dapr sidecar: settings checked first, progress while waiting.

`DaprClient()` polls the sidecar's health for DAPR_HEALTH_TIMEOUT seconds, printing a line on
stdout for each failed probe, and its first probe may take all of that on a sidecar that accepts
connections and never answers. The commands wait first, on their own terms: probes of at most a
second, a progress line now and then when stderr is a terminal, the last probe's failure in the
final error; DaprClient() then finds the sidecar healthy at once.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from .errors import ClassifierError, ConfigError, ErrorKind
from .logs import say_waiting

PROGRESS_AFTER_S = 1.0  # a wait shorter than this says nothing
PROGRESS_EVERY_S = 5.0


def check_dapr_environment(env: Mapping[str, str] | None = None) -> None:
    """The Dapr SDK's settings, checked before the SDK reads them (a bad one is a traceback there)."""
    env = os.environ if env is None else env
    for variable in ("DAPR_HTTP_PORT", "DAPR_GRPC_PORT"):
        text = env.get(variable, "").strip()
        if text and not (text.isdigit() and 1 <= int(text) <= 65535):
            raise ConfigError(
                variable, text, "must be a port number (1-65535), the sidecar's (`dapr run` sets it)"
            )
    text = env.get("DAPR_HEALTH_TIMEOUT", "").strip()
    if text:
        try:
            valid = float(text) > 0
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError("DAPR_HEALTH_TIMEOUT", text, "must be a number of seconds > 0")


def wait_for_sidecar(api_url: str, timeout_s: float) -> None:
    """Poll the sidecar's outbound health, as DaprClient() does, but in probes of at most a second
    (the SDK's first probe may wait the whole timeout on a sidecar that never answers), saying on
    stderr that it waits once it has waited PROGRESS_AFTER_S, and every PROGRESS_EVERY_S after."""
    url = f"{api_url}/healthz/outbound"
    headers = {"dapr-api-token": os.environ["DAPR_API_TOKEN"]} if os.environ.get("DAPR_API_TOKEN") else {}
    started = time.monotonic()
    deadline = started + timeout_s
    next_progress = started + PROGRESS_AFTER_S
    reason = ""
    while True:
        try:
            probe_s = max(0.1, min(1.0, deadline - time.monotonic()))
            # urlopen raises HTTPError for any status outside 2xx (urllib's HTTPErrorProcessor).
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=probe_s):
                return
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            reason = str(getattr(exc.reason, "strerror", None) or exc.reason)
        except (TimeoutError, OSError) as exc:  # a read timeout: accepted, never answered
            if not isinstance(exc, TimeoutError):
                reason = str(exc.strerror or exc)
            elif probe_s >= 1.0 or not reason:  # a probe the deadline cut short says less than the last
                reason = "timed out"
        now = time.monotonic()
        if now >= deadline:
            raise ClassifierError(
                ErrorKind.UNAVAILABLE,
                f"no Dapr sidecar answered at {api_url} within {timeout_s:g} s ({reason}): start one with "
                "`dapr run`, or point DAPR_HTTP_PORT and DAPR_GRPC_PORT at yours",
            )
        if now >= next_progress and sys.stderr.isatty():  # for a person; a script gets the last line
            say_waiting(
                f"classifier: waiting for the Dapr sidecar at {api_url} "
                f"({now - started:.0f}/{timeout_s:g} s, {reason}; Ctrl-C to stop)"
            )
            next_progress = now + PROGRESS_EVERY_S
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
