"""Preparation in background threads (prep_workers), chunking and stack_passes change speed, never scores."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.conftest import random_image, sample
from vig_udf import VIGScorer
from vig_udf.scoring.status import SampleError


@pytest.fixture(scope="module")
def base(tiny_checkpoints):
    return VIGScorer.from_pretrained(tiny_checkpoints["llava"], batch_tokens=400)


def variant(scorer: VIGScorer, **options) -> VIGScorer:
    """The same model and processor with other throughput options."""
    return VIGScorer(scorer.model, scorer.processor, options=scorer.options.model_copy(update=options),
                     model_ref=dict(scorer._model_ref), device=scorer.device, dtype=scorer.dtype)


def poison_forward(scorer: VIGScorer, word: str = "zebra"):
    """Make the model raise on any batch holding ``word`` (as test_statuses does); returns an undo function."""
    poison = scorer.tokenizer.convert_tokens_to_ids(scorer.tokenizer.tokenize(word)[0])
    inner = scorer.model.model.forward

    def failing_forward(*args, input_ids=None, **kwargs):
        if (input_ids == poison).any():
            raise RuntimeError("simulated forward failure")
        return inner(*args, input_ids=input_ids, **kwargs)

    scorer.model.model.forward = failing_forward
    return lambda: setattr(scorer.model.model, "forward", inner)


@pytest.fixture
def records(mixed_samples, tmp_path) -> list[dict]:
    """Good samples, a text-only one, an unreadable image, an invalid conversation and a forward failure."""
    img = random_image(40, 40, 9)
    return [
        *mixed_samples,  # includes the text-only record "text"
        {"id": "missing", "image": str(tmp_path / "nope.jpg"),
         "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red"}]},
        sample("poisoned", [("Is it a zebra?", "zebra")], img),
        {"id": "no_answer", "image": img, "conversations": [{"from": "human", "value": "<image>\nWhat?"}]},
        sample("last", [("Which shape is it?", "A small yellow star on the right")], random_image(70, 50, 11)),
    ]


def assert_same_results(a, b, atol=1e-6):
    assert [r.sample_id for r in a] == [r.sample_id for r in b]
    assert [r.status for r in a] == [r.status for r in b]
    assert [r.error for r in a] == [r.error for r in b]
    for x, y in zip(a, b):
        assert x.n_tokens == y.n_tokens
        np.testing.assert_array_equal(x.token_ids, y.token_ids)
        if x.status == "ok":
            assert abs(x.vig - y.vig) <= atol
            np.testing.assert_allclose(x.token_vig, y.token_vig, atol=atol)


@pytest.mark.parametrize("prep_chunk", [2, 3, 128])
def test_prefetch_on_and_off_give_the_same_results(base, records, prep_chunk):
    undo = poison_forward(base)
    try:
        off = variant(base, prep_workers=0, prep_chunk=prep_chunk).score(records)
        on = variant(base, prep_workers=1, prep_chunk=prep_chunk).score(records)
        two = variant(base, prep_workers=2, prep_chunk=prep_chunk).score(records)
    finally:
        undo()
    by_id = {r.sample_id: r.status for r in off}
    assert by_id == {"short": "ok", "multi": "ok", "long": "ok", "text": "text_only", "wide": "ok",
                     "missing": "image_unreadable", "poisoned": "model_error", "no_answer": "no_answer_tokens",
                     "last": "ok"}
    assert_same_results(off, on)
    assert_same_results(off, two)


def test_chunking_and_unstacked_passes_agree_with_one_big_chunk(base, records):
    whole = variant(base, prep_workers=0, prep_chunk=10_000).score(records)
    assert_same_results(whole, variant(base, prep_chunk=2).score(records), atol=1e-5)
    assert_same_results(whole, variant(base, stack_passes=False).score(records), atol=1e-5)


def test_unstacked_passes_never_share_a_batch(base, mixed_samples, forward_batches):
    calls = forward_batches
    images = [s for s in mixed_samples if "image" in s]
    variant(base, batch_tokens=100_000).score(images)
    assert calls == [2 * len(images)]  # stacked: both passes of every sample in one batch
    calls.clear()
    variant(base, stack_passes=False, batch_tokens=100_000).score(images)
    assert calls == [len(images), len(images)]  # real-image passes in one batch, counterfactuals in the other


def test_preparation_runs_in_a_background_thread_and_its_errors_become_statuses(base, records, monkeypatch):
    scorer = variant(base, prep_workers=1, prep_chunk=2)
    threads = {}
    real = scorer._prepare

    def prepare(index, sample_id, record):
        threads[sample_id] = threading.current_thread().name
        if sample_id == "multi":
            raise SampleError("invalid_conversation", "rejected by the test")
        return real(index, sample_id, record)

    monkeypatch.setattr(scorer, "_prepare", prepare)
    results = scorer.score(records)
    assert set(threads) == {r["id"] for r in records}
    assert all(name.startswith("vig-prep") for name in threads.values()), threads
    by_id = {r.sample_id: r for r in results}
    assert by_id["multi"].status == "invalid_conversation" and by_id["multi"].error == "rejected by the test"
    assert by_id["short"].status == by_id["long"].status == "ok"
    threads.clear()
    inline = variant(base, prep_workers=0)
    monkeypatch.setattr(inline, "_prepare", prepare)
    inline.score(records[:2])
    assert set(threads.values()) == {threading.current_thread().name}


def test_an_unexpected_preparation_error_reaches_the_caller_and_stops_the_threads(base, records, monkeypatch):
    """An error of the chunk machinery itself (a sample's own errors are its status, see test_bad_inputs)."""
    scorer = variant(base, prep_workers=2, prep_chunk=1)
    real = scorer._prepare_chunk

    def prepare_chunk(unit):
        samples, part, _ = unit
        if any(samples[i]["id"] == "long" for i in part):
            raise KeyError("a bug, not a bad sample")
        return real(unit)

    monkeypatch.setattr(scorer, "_prepare_chunk", prepare_chunk)
    with pytest.raises(KeyError, match="a bug"):
        scorer.score(records)
    assert not [t for t in threading.enumerate() if t.name.startswith("vig-prep")]


@pytest.mark.parametrize("workers", [0, 1])
def test_the_next_chunk_is_prepared_while_the_model_runs(base, mixed_samples, monkeypatch, workers):
    import vig_udf.scoring.scorer as scorer_module

    events = []
    real_forward = scorer_module.answer_logprobs

    def slow_forward(model, seqs, **kwargs):
        events.append(("forward start", time.perf_counter()))
        time.sleep(0.3)
        out = real_forward(model, seqs, **kwargs)
        events.append(("forward end", time.perf_counter()))
        return out

    monkeypatch.setattr(scorer_module, "answer_logprobs", slow_forward)
    scorer = variant(base, prep_workers=workers, prep_chunk=1, batch_tokens=100_000)
    real_prepare = scorer._prepare

    def prepare(index, sample_id, record):
        events.append((f"prepare {sample_id}", time.perf_counter()))
        return real_prepare(index, sample_id, record)

    monkeypatch.setattr(scorer, "_prepare", prepare)
    images = [s for s in mixed_samples if "image" in s][:3]
    scorer.score(images)
    second_prepared = next(t for name, t in events if name == f"prepare {images[1]['id']}")
    first_forward_end = next(t for name, t in events if name == "forward end")
    assert (second_prepared < first_forward_end) == (workers > 0)


def test_score_stream_matches_score_per_list_and_prepares_across_lists(base, records, monkeypatch):
    lists = [records[:4], records[4:], [], records[:1]]
    expected = [variant(base, prep_workers=0).score(part) for part in lists]
    scorer = variant(base, prep_workers=1, prep_chunk=3)
    seen = []
    real = scorer._prepare
    monkeypatch.setattr(scorer, "_prepare", lambda i, sid, rec: (seen.append(sid), real(i, sid, rec))[1])
    stream = scorer.score_stream(iter(lists))
    first = next(stream)
    time.sleep(0.5)  # the caller is busy with the first list's results; the next list is prepared meanwhile
    assert records[4]["id"] in seen
    got = [first, *stream]
    assert len(got) == 4 and got[2] == []
    for a, b in zip(got, expected):
        assert_same_results(a, b)


def test_throughput_options_are_validated_and_left_out_of_the_scorer_id(tiny_checkpoints):
    path = tiny_checkpoints["llava"]
    base_id = VIGScorer.from_pretrained(path).scorer_id
    assert VIGScorer.from_pretrained(path, prep_workers=0, prep_chunk=7, stack_passes=False).scorer_id == base_id
    with pytest.raises(ValueError, match="prep_workers"):
        VIGScorer.from_pretrained(path, prep_workers=-1)
    with pytest.raises(ValueError, match="prep_chunk"):
        VIGScorer.from_pretrained(path, prep_chunk=0)
