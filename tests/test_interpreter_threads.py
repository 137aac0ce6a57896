"""A request alone on a model uses every core (the graph's shared interpreter); concurrent ones
get one-thread interpreters of their own. Same answers either way, nothing carried over."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import IMAGES, MODELS

from service.config import Settings
from service.errors import ConfigError
from service.imaging import decode_rgb
from service.inference.backend import load_graph
from service.inference.cache import GraphCache
from service.inference.litert import LITERT, MAX_IDLE_PER_THREAD, LiteRtGraph
from service.inference.model import InferenceError, InferenceErrorKind
from service.pipeline import Classifier
from service.stores.local import LocalStore

BIRDS = (MODELS / "aiy_birds_v1" / "model.tflite").read_bytes()
BIRD = decode_rgb((IMAGES / "classify" / "bird.jpg").read_bytes(), 224, 224).reshape(-1)


def scores(graph: LiteRtGraph, pixels: np.ndarray = BIRD) -> tuple[np.ndarray, bool]:
    """One inference through a context of `graph`: its output and whether it was the shared one."""
    context = graph.new_context()
    try:
        context.set_input(0, pixels)
        context.compute()
        return context.output(0), context.shared
    finally:
        context.release()


def birds_graph(solo_threads: int) -> LiteRtGraph:
    graph = load_graph(BIRDS, num_threads=1, solo_threads=solo_threads)
    assert isinstance(graph, LiteRtGraph)
    return graph


def test_a_context_alone_gets_the_shared_interpreter_and_the_same_answer() -> None:
    one_thread, _ = scores(birds_graph(1))
    graph = birds_graph(2)
    output, shared = scores(graph)
    assert shared and np.array_equal(output, one_thread)
    assert graph.solo_free()  # given back


def test_a_second_open_context_gets_a_per_thread_interpreter() -> None:
    graph = birds_graph(2)
    first = graph.new_context()
    second = graph.new_context()  # the first is still open
    assert first.shared and not second.shared
    assert not graph.solo_free()
    second.release()
    assert not graph.solo_free()  # still lent to the first
    first.release()
    first.release()  # twice is safe and gives nothing back twice
    assert graph.solo_free()


def test_after_an_overlap_the_shared_interpreter_waits_for_a_quiet_spell() -> None:
    """Under load contexts overlap every few requests; lending the shared interpreter in the
    gaps between would wake its threads to compete for busy cores. A context alone right after
    an overlap gets a one-thread interpreter; once none overlapped for the quiet spell, the
    shared one again (a spell longer than the default: this machine may stall for 0.1 s)."""
    graph = LiteRtGraph(BIRDS, num_threads=1, solo_threads=2, solo_quiet_s=0.3)
    alone = graph.new_context()
    assert alone.shared  # no overlap yet
    overlapping = graph.new_context()
    assert not overlapping.shared
    alone.release()
    overlapping.release()
    right_after = graph.new_context()
    assert not right_after.shared and graph.solo_free()
    right_after.release()
    time.sleep(0.35)
    later = graph.new_context()
    assert later.shared
    later.release()
    assert graph.solo_free()


def test_the_shared_interpreter_holds_no_data_from_the_last_request() -> None:
    graph = birds_graph(2)
    context = graph.new_context()
    context.set_input(0, np.random.default_rng(1).integers(0, 255, BIRD.size, dtype=np.uint8))
    context.compute()
    assert context.output(0).any()
    context.release()
    reused = graph.new_context()
    assert reused.shared and not reused.output(0).any()
    reused.release()


def test_one_thread_setting_builds_no_shared_interpreter() -> None:
    graph = birds_graph(1)
    assert not graph.solo_free()
    assert scores(graph)[1] is False


def test_concurrent_requests_all_get_the_right_answer() -> None:
    """Threads opening contexts at once: each answer equals the one-thread one (a shared
    interpreter lent twice at once would mix two requests' tensors), and both kinds ran."""
    rng = np.random.default_rng(7)
    inputs = [BIRD] + [rng.integers(0, 255, BIRD.size, dtype=np.uint8) for _ in range(3)]
    reference_graph = birds_graph(1)
    expected = [scores(reference_graph, pixels)[0] for pixels in inputs]
    graph = birds_graph(2)
    kinds: set[bool] = set()
    lock = threading.Lock()

    def work(worker: int) -> None:
        for step in range(30):
            which = (worker + step) % len(inputs)
            output, shared = scores(graph, inputs[which])
            assert np.array_equal(output, expected[which]), (worker, step, shared)
            with lock:
                kinds.add(shared)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(work, worker) for worker in range(4)]:
            future.result()
    assert kinds == {True, False}
    assert graph.solo_free()  # every context closed: the shared one is back


def test_the_setting_is_read_from_the_environment_and_checked() -> None:
    assert Settings.from_env({"CLASSIFIER_SOLO_INTERPRETER_THREADS": "3"}).solo_interpreter_threads == 3
    with pytest.raises(ConfigError, match="CLASSIFIER_SOLO_INTERPRETER_THREADS"):
        Settings.from_env({"CLASSIFIER_SOLO_INTERPRETER_THREADS": "0"})


def test_the_pipeline_answers_alike_with_and_without_it(tmp_path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("aiy_birds_v1", BIRDS)
    image = (IMAGES / "classify" / "bird.jpg").read_bytes()
    answers = {}
    for solo_threads in (1, 2):
        settings = Settings(store_dir=tmp_path / "store", solo_interpreter_threads=solo_threads)
        classifier = Classifier(settings, store=store)
        try:
            answers[solo_threads] = [
                classifier.classify(image, "aiy_birds_v1")["predictions"] for _ in range(3)
            ]
            graph = classifier.model("aiy_birds_v1").graph
            assert isinstance(graph, LiteRtGraph) and graph.solo_free() == (solo_threads > 1)
        finally:
            classifier.close()
    assert answers[2] == answers[1] and answers[1][0] == answers[1][2]
    assert answers[1][0][0]["label"] == "Aix galericulata"


def test_a_thread_pools_at_most_two_idle_interpreters_and_a_released_context_is_finalized() -> None:
    graph = birds_graph(1)
    contexts = [graph.new_context() for _ in range(MAX_IDLE_PER_THREAD + 1)]  # one pooled, two built
    assert graph.idle_count() == 0
    for context in contexts:
        context.release()
    assert graph.idle_count() == MAX_IDLE_PER_THREAD  # the third is dropped
    with pytest.raises(InferenceError) as finalized:
        contexts[0].compute()
    assert (finalized.value.kind, str(finalized.value)) == (
        InferenceErrorKind.INVALID_ARGUMENT,
        "context is finalized",
    )
    assert scores(graph)[0].argmax() == scores(birds_graph(1))[0].argmax()  # the pooled ones still answer


def test_the_graph_cache_keeps_its_capacity_dropping_the_least_recently_used() -> None:
    """Models a guest loads from bytes: at most `capacity` graphs stay built."""
    mobilenet = (MODELS / "mobilenet_v2_1.0_224_quant" / "model.tflite").read_bytes()
    cache = GraphCache(capacity=1)
    birds = cache.get_or_load(LITERT, [BIRDS])
    assert cache.get_or_load(LITERT, [BIRDS]) is birds  # held
    other = cache.get_or_load(LITERT, [mobilenet])
    assert cache.get_or_load(LITERT, [mobilenet]) is other
    again = cache.get_or_load(LITERT, [BIRDS])  # birds was dropped for mobilenet: built anew
    assert again is not birds and again.digest == birds.digest
