"""Two replicas of `image-classifier` (two daprd + app pairs, one app id, one Redis) called by
a third daprd of another app id: invocations spread over both, one consumer group shares the
`images` topic, and a replica killed with SIGKILL mid-stream loses no event.

Per-replica counts come from each daprd's own metrics (dapr_runtime_service_invocation_req_recv_total,
dapr_component_pubsub_ingress_count): no product field just for the test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import IMAGES, MODELS
from dapr.clients import DaprClient
from real_dapr import Daprd, sidecar_env, stack, wait_for

from service.stores.dapr import DaprStore

pytestmark = pytest.mark.dapr

BIRDS_DIR = MODELS / "aiy_birds_v1"
BIRD_JPG = (IMAGES / "classify" / "bird.jpg").read_bytes()
EVENTS = 300


def metric(daprd: Daprd, name: str, **labels: str) -> float:
    """The sum of a daprd metric over the series whose labels include `labels`."""
    total = 0.0
    for line in daprd.metrics().splitlines():
        if not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def _pending(redis: Any) -> int:
    """Events of `images` read by a daprd and not acked yet (the shared consumer group)."""
    return int(redis.xpending("images", "image-classifier")["pending"])


def results(redis: Any) -> Counter[str]:
    """How many results each event id has on `classifications`."""
    return Counter(
        json.loads(fields[b"data"])["data"].get("correlation_id")
        for _, fields in redis.xrange("classifications")
    )


def test_two_replicas_share_invocations_and_events_and_survive_a_kill(tmp_path: Path) -> None:
    with stack(tmp_path, replicas=2) as s:
        caller = s.add_sidecar("caller")
        with sidecar_env(caller), DaprClient() as client:
            labels = (BIRDS_DIR / "labels.txt").read_text().splitlines()
            DaprStore(client, tmp_path / "up").put("birds", (BIRDS_DIR / "model.tflite").read_bytes(), labels)
        for _, app in s.replicas:
            app.wait_ready()

        # Service invocation: the sqlite resolver picks an instance at random per call.
        for _ in range(40):
            answer = caller.invoke("classify", BIRD_JPG, "model=birds", app_id="image-classifier")
            assert answer.status == 200, answer
        served = [
            metric(d, "dapr_runtime_service_invocation_req_recv_total", src_app_id="caller")
            for d, _ in s.replicas
        ]
        assert sum(served) == 40 and min(served) > 0, served

        # 300 events on `images`, one consumer group (the app id): each replica takes some.
        redis = s.redis.client()
        body = json.dumps({"image_base64": base64.b64encode(BIRD_JPG).decode(), "model": "birds"}).encode()
        published = threading.Event()
        errors: list[Any] = []

        def publish() -> None:
            for i in range(EVENTS):
                answer = caller.publish(
                    "images", body, "application/json", metadata={"cloudevent.id": f"ev-{i}"}
                )
                if answer.status != 204:
                    errors.append(answer)
                time.sleep(0.02)  # a stream, not a burst: the kill lands mid-way
            published.set()

        publisher = threading.Thread(target=publish)
        publisher.start()
        try:
            wait_for(lambda: len(results(redis)) >= EVENTS // 3, 120, "a third of the results")
            victim_daprd, victim_app = s.replicas[1]
            taken = [metric(d, "dapr_component_pubsub_ingress_count", topic="images") for d, _ in s.replicas]
            # The victim hangs first (SIGSTOP), so its daprd holds events it has read and not
            # acked, then dies with its daprd (SIGKILL both: a crashed pod or machine).
            assert victim_app.process is not None
            os.kill(victim_app.process.pid, signal.SIGSTOP)
            wait_for(lambda: _pending(redis) >= 5, 60, "events stuck at the hung replica")
            victim_daprd.kill()
            victim_app.kill()
            killed_at = time.monotonic()
            pending_at_kill = _pending(redis)
            answered_at_kill = len(results(redis))
        finally:
            publisher.join()
        assert not errors, errors[:3]
        assert min(taken) > 0, taken  # both replicas were consuming before the kill
        assert pending_at_kill >= 5, pending_at_kill  # left to the survivor's reclaim

        seen = wait_for(
            lambda: (r := results(redis)) and len(r) == EVENTS and r,
            150,  # processingTimeout 60 s + redeliverInterval 5 s (components/pubsub.yaml)
            "every event answered after the kill",
            interval=0.5,
        )
        recovery_s = time.monotonic() - killed_at
        assert set(seen) == {f"ev-{i}" for i in range(EVENTS)}
        duplicates = sum(n - 1 for n in seen.values())
        assert all(
            json.loads(fields[b"data"])["data"]["predictions"][0]["label"] == "Aix galericulata"
            for _, fields in redis.xrange("classifications")
        )
        survivor = s.replicas[0][0]
        print(
            f"\nper-replica invocations {served}; events taken before the kill {taken}; "
            f"answered at the kill {answered_at_kill}; pending (read, not acked) {pending_at_kill}; "
            f"all {EVENTS} answered {recovery_s:.1f} s after the kill; "
            f"duplicates {duplicates}; survivor handled "
            f"{metric(survivor, 'dapr_component_pubsub_ingress_count', topic='images'):.0f}"
        )
        assert duplicates <= 100, duplicates  # at most what the dead daprd had read (queueDepth)
