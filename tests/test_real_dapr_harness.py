"""The harness's own facts about the real daprd (tests/real_dapr.py), where a wrong one makes other
tests flaky instead of failing them.

daprd 1.18 goes on starting after a component fails to init: for ~0.3 s before it exits, its
outbound health is 204. A harness that took that for a start passed `add_replica()` with Redis
down about once in 30 runs (test_real_dapr_state's Redis-down test: "DID NOT RAISE").
"""

from __future__ import annotations

from pathlib import Path

import pytest
from real_dapr import Daprd, daprd_exiting, stack

pytestmark = pytest.mark.dapr


def test_a_daprd_whose_components_cannot_init_is_never_taken_for_started(tmp_path: Path) -> None:
    with stack(tmp_path, replicas=0) as s:
        s.redis.stop()
        daprd = Daprd(tmp_path, s.resources, s.config, app_id="harness", app_port=0, app_health_check=False)
        try:
            with pytest.raises(AssertionError, match="daprd exited with 1") as failed:
                daprd.start()
            assert "INIT_COMPONENT_FAILURE" in str(failed.value) and "connection refused" in str(failed.value)
            # What wait_outbound reads to tell a daprd on its way out from a started one.
            assert daprd_exiting(daprd.log_of_this_start())

            s.redis.start()
            daprd.start()  # the same daprd and log file: the failed start's lines do not count
            assert daprd_exiting(daprd.log()) and not daprd_exiting(daprd.log_of_this_start())
            assert daprd.http("GET", "/v1.0/healthz/outbound").status == 204
            assert daprd.process is not None and daprd.process.poll() is None
        finally:
            daprd.stop()
