"""The edge's SUCCESS / DROP / RETRY decision for pub/sub events, for every error kind.

tests/test_dapr_app.py and tests/test_real_dapr_pubsub.py check what daprd does with these answers
(redelivery, the dead-letter topic) through `classifier serve`; these run the decision in the test
process, over every ErrorKind, so mutation testing (tools/mutation.py) sees it.
"""

from __future__ import annotations

import pytest

from service.edge.answers import image_answer, publishes_error, update_answer
from service.errors import ErrorKind

# Written out, not derived from the module: a fault the store or daprd may get over is retried;
# every other one would fail the same way again, so its requester is told and the event dropped.
RETRIED = {ErrorKind.UNAVAILABLE}
DROPPED = {
    ErrorKind.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND,
    ErrorKind.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED,
    ErrorKind.GUEST_FAILED,
    ErrorKind.INTERNAL,
}


def test_every_error_kind_has_a_decision() -> None:
    assert set(ErrorKind) == RETRIED | DROPPED and not RETRIED & DROPPED


def test_a_classified_image_is_a_success_once_its_result_is_published() -> None:
    assert image_answer(None, published=True) == "success"


def test_an_image_whose_result_could_not_be_published_is_retried() -> None:
    assert image_answer(None, published=False) == "retry"


@pytest.mark.parametrize("kind", sorted(DROPPED))
def test_a_lasting_fault_is_told_to_the_requester_then_dropped(kind: ErrorKind) -> None:
    assert publishes_error(kind)
    assert image_answer(kind, published=True) == "drop"


@pytest.mark.parametrize("kind", sorted(DROPPED))
def test_a_lasting_fault_whose_error_result_was_not_published_is_retried(kind: ErrorKind) -> None:
    assert image_answer(kind, published=False) == "retry"  # else the requester would never learn


@pytest.mark.parametrize("kind", sorted(RETRIED))
def test_a_transient_fault_is_retried_without_telling_the_requester(kind: ErrorKind) -> None:
    assert not publishes_error(kind)
    assert image_answer(kind, published=False) == "retry"
    assert image_answer(kind, published=True) == "retry"


def test_an_applied_update_is_a_success() -> None:
    assert update_answer(None) == "success"


@pytest.mark.parametrize("kind", sorted(DROPPED))
def test_an_update_that_would_fail_again_is_dropped(kind: ErrorKind) -> None:
    assert update_answer(kind) == "drop"


@pytest.mark.parametrize("kind", sorted(RETRIED))
def test_an_update_failing_on_a_transient_fault_is_retried(kind: ErrorKind) -> None:
    assert update_answer(kind) == "retry"
