"""Selective training without Spark: labels on exactly the selected tokens, the loss, gradients, resume."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import random_image, sample

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llava(tiny_checkpoints):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_checkpoints["llava"]
    return path, AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()


def scored_row(processor, record: dict, keep=None, image_bytes=None) -> dict:
    """A training-set row as the train job builds it: the scorer's tokens for ``record`` plus a mask."""
    import io

    from vig_udf.scoring.conversation import parse_conversation
    from vig_udf.scoring.inputs import InputBuilder

    conv = parse_conversation(record["conversations"], has_image="image" in record)
    _, tokens = InputBuilder(processor).build(conv, record.get("image"))
    keep = np.ones(len(tokens), dtype=bool) if keep is None else np.asarray(keep(len(tokens)), dtype=bool)
    data = None
    if "image" in record:
        buf = io.BytesIO()
        record["image"].save(buf, format="PNG")
        data = buf.getvalue()
    return {"sample_id": record["id"], "image_path": None, "image_bytes": data,
            "conversations": record["conversations"], "token_keep": keep.tolist(),
            "token_ids": tokens.token_ids.tolist(), "token_turn": tokens.turn.tolist(),
            "token_char_start": tokens.char_start.tolist(), "token_char_end": tokens.char_end.tolist()}


def records():
    return [
        sample("a", [("What colour is the square?", "The square is red."), ("How many?", "Three squares")],
               random_image(64, 48, 0)),
        sample("b", [("Where is the circle?", "On the left side")], random_image(40, 40, 1)),
        sample("t", [("Say hello.", "Hello there, friend.")]),
    ]


def alternate(n):
    return [i % 2 == 0 for i in range(n)]


def test_labels_are_the_selected_answer_tokens_only(llava):
    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.train.examples import IGNORE_INDEX, build_example

    _, processor, _ = llava
    row = scored_row(processor, records()[0], keep=alternate)
    example = build_example(InputBuilder(processor), row)
    labelled = np.nonzero(example.labels != IGNORE_INDEX)[0]
    ids = example.seq.input_ids.numpy()
    kept_ids = np.asarray(row["token_ids"])[np.asarray(row["token_keep"])]
    assert labelled.tolist() == example.seq.positions[np.asarray(row["token_keep"])].tolist()
    assert ids[labelled].tolist() == kept_ids.tolist() and example.labels[labelled].tolist() == kept_ids.tolist()
    assert not example.realigned and example.n_supervised == sum(row["token_keep"])


def test_mask_moves_to_another_tokenizer_through_character_spans(llava):
    """Stored tokens from a different tokenizer: the kept character spans decide the labels."""
    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.selection.spans import kept_char_spans
    from vig_udf.train.examples import IGNORE_INDEX, build_example

    _, processor, _ = llava
    row = scored_row(processor, records()[0])
    # pretend a character-level scorer tokenizer: one token per answer character; keep the word "red"
    answers = [t["value"] for t in row["conversations"] if t["from"] == "gpt"]
    turn, start, end = zip(*[(k, i, i + 1) for k, a in enumerate(answers) for i in range(len(a))])
    red = answers[0].index("red")
    keep = [(k == 0 and red <= s < red + 3) for k, s in zip(turn, start)]
    row.update(token_ids=[1] * len(turn), token_turn=list(turn), token_char_start=list(start),
               token_char_end=list(end), token_keep=keep)
    example = build_example(InputBuilder(processor), row)
    assert example.realigned
    tokenizer = processor.tokenizer
    labelled = example.labels[example.labels != IGNORE_INDEX]
    assert "red" in tokenizer.decode(labelled) and len(tokenizer.decode(labelled).strip()) <= len(" red") + 1
    assert kept_char_spans(turn, start, end, keep) == [(0, red, red + 3)]


def padded_labels(examples, batch):
    from vig_udf.train.examples import IGNORE_INDEX

    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for i, e in enumerate(examples):
        labels[i, : len(e.labels)] = torch.as_tensor(e.labels)
    return labels


def manual_loss_sum(model, batch, examples) -> tuple[float, int]:
    """Cross-entropy summed by hand over the labelled positions of the full logits, and their count."""
    from vig_udf.train.examples import IGNORE_INDEX

    with torch.no_grad():
        logits = model(**batch).logits.float()
    total, n = 0.0, 0
    for i, e in enumerate(examples):
        for pos in np.nonzero(e.labels != IGNORE_INDEX)[0]:
            total -= torch.log_softmax(logits[i, pos - 1], -1)[e.labels[pos]].item()
            n += 1
    return total, n


def test_end_of_turn_is_supervised_after_each_turn_that_keeps_a_token(llava):
    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.train.examples import IGNORE_INDEX, build_example

    _, processor, _ = llava
    eos = processor.tokenizer.eos_token_id
    # keep tokens of the first turn only: its end-of-turn token is labelled, the second turn's is not
    row = scored_row(processor, records()[0])
    turn = np.asarray(row["token_turn"])
    row["token_keep"] = (turn == 0).tolist()
    on = build_example(InputBuilder(processor), row, supervise_end_of_turn=True)
    off = build_example(InputBuilder(processor), row, supervise_end_of_turn=False)
    ids = on.seq.input_ids.numpy()
    extra = np.nonzero((on.labels != IGNORE_INDEX) & (off.labels == IGNORE_INDEX))[0]
    last_of_turn0 = on.seq.positions[turn == 0].max()
    assert extra.tolist() == [last_of_turn0 + 1] and ids[extra].tolist() == [eos]
    assert on.n_end_of_turn == 1 and off.n_end_of_turn == 0 and on.n_supervised == off.n_supervised + 1
    # the eos of the unkept second turn is in the input but not labelled
    assert (ids == eos).sum() == 2


def test_loss_is_cross_entropy_over_exactly_the_selected_tokens(llava):
    from vig_udf.scoring.forward import collate
    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.train.examples import IGNORE_INDEX, build_example
    from vig_udf.train.loss import LabelledPositionsHead, selected_token_loss

    _, processor, model = llava
    builder = InputBuilder(processor)
    head = LabelledPositionsHead(model)
    try:
        for eot in (False, True):
            rows = [scored_row(processor, r, keep=alternate) for r in records()[:2]]
            examples = [build_example(builder, row, supervise_end_of_turn=eot) for row in rows]
            batch = collate([e.seq for e in examples], processor.tokenizer.pad_token_id)
            labels = padded_labels(examples, batch)
            with torch.no_grad():
                loss_sum = selected_token_loss(model, head, batch, labels)
            manual, n = manual_loss_sum(model, batch, examples)
            selected = sum(sum(r["token_keep"]) for r in rows)
            assert n == selected + (sum(e.n_end_of_turn for e in examples) if eot else 0) and n > selected * eot
            assert loss_sum.item() == pytest.approx(manual, rel=1e-5, abs=1e-6)
            # HF's own loss over the same labels is the same mean; the model without the hook is unchanged
            assert model(**batch, labels=labels).loss.item() == pytest.approx(manual / n, rel=1e-5)
        other = torch.full_like(labels, IGNORE_INDEX)
        first = np.nonzero(examples[0].labels != IGNORE_INDEX)[0][0]
        other[0, first] = labels[0, first]
        with torch.no_grad():
            assert selected_token_loss(model, head, batch, other).item() != pytest.approx(loss_sum.item())
    finally:
        head.handle.remove()


def test_gradient_accumulation_normalises_by_the_supervised_tokens_of_the_whole_step(llava, tmp_path):
    """Two accumulated forward passes with unequal supervised-token counts: the Trainer's num_items_in_batch
    is their total, and the accumulated gradient is that of the mean cross-entropy over all their tokens."""
    import copy

    from transformers import AutoModelForImageTextToText

    from vig_udf.scoring.forward import collate
    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.train.examples import build_example
    from vig_udf.train.trainer import SelectiveTrainer, training_arguments

    path, processor, _ = llava
    builder = InputBuilder(processor)
    parts = [[scored_row(processor, records()[0])], [scored_row(processor, r, keep=alternate) for r in records()[1:]]]
    micro = []
    for rows in parts:
        examples = [build_example(builder, row, supervise_end_of_turn=True) for row in rows]
        batch = collate([e.seq for e in examples], processor.tokenizer.pad_token_id)
        micro.append((examples, {**batch, "labels": padded_labels(examples, batch), "n_samples": torch.tensor(len(rows)),
                                 "end_of_turn": torch.tensor(0), "realigned": torch.tensor(0), "skipped": [],
                                 "truncated": []}))
    counts = [sum(e.n_supervised for e in ex) for ex, _ in micro]
    assert counts[0] != counts[1]
    model = AutoModelForImageTextToText.from_pretrained(path)
    reference = copy.deepcopy(model)
    args = training_arguments(settings(path, gradient_accumulation_steps=2), tmp_path, precision="float32", processes=1)
    trainer = SelectiveTrainer(model=model, args=args, processing_class=processor)
    _, num_items = trainer.get_batch_samples(iter([dict(b) for _, b in micro]), 2, torch.device("cpu"))
    assert int(num_items) == sum(counts)
    for _, batch in micro:
        trainer.training_step(model, dict(batch), num_items)
    # by hand: the mean over the step's tokens of the full-logit cross-entropy
    total = 0.0
    for examples, batch in micro:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "n_samples", "end_of_turn", "realigned",
                                                              "skipped", "truncated")}
        logits = reference(**inputs).logits.float()
        labels = batch["labels"]
        total = total + torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                          labels[:, 1:].reshape(-1), reduction="sum")
    (total / sum(counts)).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-4, atol=1e-7)


def weighted_row(processor, record: dict, seed: int) -> dict:
    """A training-set row of a token_weight=vig selection: alternate tokens kept, weights from random token VIGs."""
    from vig_udf.selection import policies as sel

    row = scored_row(processor, record, keep=alternate)
    keep = np.asarray(row["token_keep"])
    vig = np.random.default_rng(seed).normal(0, 2, keep.size)
    return {**row, "token_weight": sel.token_weights(vig, keep, temperature=1.0, w_max=3.0).tolist()}


def test_token_weights_make_a_step_minimise_the_weighted_mean_computed_by_hand(llava, tmp_path):
    """Two accumulated forward passes of weighted rows: every labelled position carries its stored weight (1 at
    end-of-turn tokens), num_items_in_batch is the weights' sum, and the gradient is that of
    sum(w_i * nll_i) / sum(w_i) over the step's supervised tokens, by hand from the full logits."""
    import copy

    from transformers import AutoModelForImageTextToText

    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.train.data import TrainSetStream
    from vig_udf.train.examples import IGNORE_INDEX, build_example
    from vig_udf.train.trainer import SelectiveTrainer, training_arguments

    path, processor, _ = llava
    builder = InputBuilder(processor)
    rows = [weighted_row(processor, r, seed) for seed, r in enumerate(records())]
    micro = []
    for part in (rows[:1], rows[1:]):
        examples = [build_example(builder, row, supervise_end_of_turn=True) for row in part]
        for row, e in zip(part, examples):
            keep = np.asarray(row["token_keep"])
            positions = e.seq.positions[keep]
            np.testing.assert_array_equal(e.weights[positions], np.asarray(row["token_weight"])[keep])
            others = np.setdiff1d(np.nonzero(e.labels != IGNORE_INDEX)[0], positions)
            assert len(others) == e.n_end_of_turn and np.all(e.weights[others] == 1.0)
            assert np.all(e.weights[e.labels == IGNORE_INDEX] == 0)
        micro.append(TrainSetStream._batch(examples, processor.tokenizer.pad_token_id, examples[0]))
    weights = [b["label_weights"] for b in micro]
    model = AutoModelForImageTextToText.from_pretrained(path)
    reference = copy.deepcopy(model)
    args = training_arguments(settings(path, gradient_accumulation_steps=2), tmp_path, precision="float32", processes=1)
    trainer = SelectiveTrainer(model=model, args=args, processing_class=processor)
    _, num_items = trainer.get_batch_samples(iter([dict(b) for b in micro]), 2, torch.device("cpu"))
    assert float(num_items) == pytest.approx(sum(float(w.sum()) for w in weights), rel=1e-6)
    for batch in micro:
        trainer.training_step(model, dict(batch), num_items)
    weighted, plain, count = 0.0, 0.0, 0
    for batch, w in zip(micro, weights):
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "label_weights", "n_samples", "end_of_turn",
                                                              "realigned", "skipped", "truncated")}
        logits = reference(**inputs).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                batch["labels"][:, 1:].reshape(-1), reduction="none")
        weighted = weighted + (nll * w[:, 1:].reshape(-1)).sum()
        plain, count = plain + nll.sum().item(), count + int(batch["labels"].ne(IGNORE_INDEX).sum())
    total = sum(w.sum() for w in weights)
    assert (weighted / total).item() != pytest.approx(plain / count, rel=1e-3)  # the weights change the loss
    (weighted / total).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-4, atol=1e-7)


def test_unselected_positions_get_no_gradient(llava):
    """The gradient reaching the final hidden states is zero everywhere except just before a selected token."""
    from vig_udf.scoring.forward import collate
    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.train.examples import IGNORE_INDEX, build_example
    from vig_udf.train.loss import LabelledPositionsHead, selected_token_loss

    _, processor, model = llava
    example = build_example(InputBuilder(processor), scored_row(processor, records()[0], keep=alternate))
    batch = collate([example.seq], processor.tokenizer.pad_token_id)
    labels = torch.as_tensor(example.labels)[None]
    captured = {}

    def keep_hidden(module, args, output):
        output.last_hidden_state.retain_grad()
        captured["hidden"] = output.last_hidden_state

    handle = model.model.register_forward_hook(keep_hidden)
    head = LabelledPositionsHead(model)
    try:
        selected_token_loss(model, head, batch, labels).backward()
    finally:
        handle.remove()
        head.handle.remove()
        model.zero_grad(set_to_none=True)
    grad_norm = captured["hidden"].grad[0].norm(dim=-1)
    predicts_selected = np.zeros(len(example.labels), dtype=bool)
    predicts_selected[np.nonzero(example.labels != IGNORE_INDEX)[0] - 1] = True
    assert torch.all(grad_norm[torch.as_tensor(~predicts_selected)] == 0)
    assert torch.all(grad_norm[torch.as_tensor(predicts_selected)] > 0)


def write_train_set(processor, path, n_copies: int = 4) -> str:
    rows = []
    for copy in range(n_copies):
        for r in records():
            row = scored_row(processor, r, keep=alternate)
            rows.append({**row, "sample_id": f"{row['sample_id']}{copy}"})
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    return str(path)


def settings(base_model: str, **kw):
    from vig_udf.train.settings import TrainSettings

    defaults = dict(steps=6, batch_size=4, learning_rate=3e-3, warmup_ratio=0.0, checkpoint_every=2, seed=3)
    return TrainSettings(base_model=base_model, **{**defaults, **kw})


class Interrupt(Exception):
    """What :func:`interrupt_at` raises: a training run killed mid-way."""


def interrupt_at(stop: int):
    """An ``on_step`` callback that interrupts the run when step ``stop`` is done."""

    def on_step(step, metrics):
        if step == stop:
            raise Interrupt

    return on_step


def trained_weights(model_dir: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()


def test_training_lowers_the_loss_and_resume_gives_the_same_weights(llava, tmp_path):
    import json
    import pickle
    import shutil

    from vig_udf.train.trainer import train_selected

    path, processor, _ = llava
    data = write_train_set(processor, tmp_path / "train.parquet")
    full = train_selected(settings(path, steps=12, checkpoint_every=4), data, str(tmp_path / "full"))
    assert np.mean(full["losses"][-3:]) < np.mean(full["losses"][:3])
    assert full["loss_steps"] == list(range(1, 13)) and not full["skipped"]
    assert full["supervised_tokens"] > full["end_of_turn_tokens"] > 0 and full["samples"] == 12 * 4

    with pytest.raises(Interrupt):
        train_selected(settings(path, steps=12, checkpoint_every=4), data, str(tmp_path / "resumed"),
                       on_step=interrupt_at(6))
    # a checkpoint folder is shared storage: a pickle planted in it must not run at resume
    shutil.copytree(tmp_path / "resumed", tmp_path / "planted")
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    planted = [f for f in (tmp_path / "planted" / "checkpoints").rglob("*") if f.suffix in (".pt", ".pth", ".bin")]
    assert {f.name for f in planted} >= {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        folder = tmp_path / f"planted-{name}"
        shutil.copytree(tmp_path / "resumed", folder)
        for f in folder.rglob(name):
            f.write_bytes(pickle.dumps(Planted()))
        with pytest.raises(pickle.UnpicklingError):
            train_selected(settings(path, steps=12, checkpoint_every=4), data, str(folder))
        assert not marker.exists()
    # another run's settings or another training set in the folder: refused, naming the difference
    with pytest.raises(ValueError, match=r"settings\.learning_rate"):
        train_selected(settings(path, steps=12, checkpoint_every=4, learning_rate=1e-3), data, str(tmp_path / "resumed"))
    other = write_train_set(processor, tmp_path / "other.parquet", n_copies=3)
    with pytest.raises(ValueError, match=r"train_set\.rows"):
        train_selected(settings(path, steps=12, checkpoint_every=4), other, str(tmp_path / "resumed"))
    steps_seen = []
    resumed = train_selected(settings(path, steps=12, checkpoint_every=4), data, str(tmp_path / "resumed"),
                             on_step=lambda step, m: steps_seen.append(step))
    assert resumed["resumed_from_step"] == 4 and steps_seen == list(range(5, 13))
    assert resumed["losses"] == full["losses"] and resumed["supervised_tokens"] == full["supervised_tokens"]
    a, b = trained_weights(full["model_dir"]), trained_weights(resumed["model_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the vision tower stays frozen by default (LLaVA-1.5 instruction tuning)
    base = trained_weights(path)
    assert all(torch.equal(a[k], base[k]) for k in a if ".vision_tower." in k)
    assert any(not torch.equal(a[k], base[k]) for k in a if ".multi_modal_projector." in k)
    assert json.loads((tmp_path / "full" / "vig_run.json").read_text())["settings"]["supervise_end_of_turn"] is True


def test_lora_adapter_alone_reproduces_the_trained_model(llava, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vig_udf.train.trainer import train_selected

    path, processor, _ = llava
    data = write_train_set(processor, tmp_path / "train.parquet", n_copies=2)
    result = train_selected(settings(path, steps=4, checkpoint_every=0, method="lora",
                                     lora={"r": 4, "alpha": 8, "dropout": 0.0}), data, str(tmp_path / "lora"))
    total = sum(result["parameters"].values())
    assert 0 < result["trainable_parameters"] < total
    merged, base = trained_weights(result["model_dir"]), trained_weights(path)
    assert merged.keys() == base.keys()
    changed = [k for k in merged if not torch.equal(merged[k], base[k])]
    assert any(".language_model." in k for k in changed) and any(".multi_modal_projector." in k for k in changed)
    assert not any(".vision_tower." in k for k in changed)
    # the base checkpoint plus the adapter folder alone give the trained model, projector included
    rebuilt = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(path),
                                        str(tmp_path / "lora" / "adapter")).merge_and_unload().state_dict()
    assert rebuilt.keys() == merged.keys() and all(torch.equal(rebuilt[k], merged[k]) for k in merged)


def test_an_interrupted_lora_run_resumes_to_the_same_weights(llava, tmp_path):
    from vig_udf.train.trainer import train_selected

    path, processor, _ = llava
    data = write_train_set(processor, tmp_path / "train.parquet", n_copies=2)
    lora = settings(path, steps=6, checkpoint_every=2, method="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0})
    full = train_selected(lora, data, str(tmp_path / "full"))

    with pytest.raises(Interrupt):
        train_selected(lora, data, str(tmp_path / "resumed"), on_step=interrupt_at(3))
    resumed = train_selected(lora, data, str(tmp_path / "resumed"))
    assert resumed["resumed_from_step"] == 2 and resumed["losses"] == full["losses"]
    a, b = trained_weights(full["model_dir"]), trained_weights(resumed["model_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], v) for k, v in trained_weights(path).items())  # it did train


def test_samples_that_fail_are_skipped_and_reported(llava, tmp_path):
    """batch_size 1 over one good and one unreadable sample: the bad sample's steps supervise nothing."""
    from vig_udf.train.run_folder import RunFolder
    from vig_udf.train.trainer import SKIPPED_FILE, train_selected

    path, processor, _ = llava
    good = scored_row(processor, records()[1])
    bad = {**good, "sample_id": "broken", "image_bytes": b"not an image"}
    data = str(tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist([good, bad]), data)
    seen = []
    result = train_selected(settings(path, steps=6, batch_size=1, checkpoint_every=2), data, str(tmp_path / "run"),
                            on_step=lambda step, m: seen.append(m))
    assert list(result["skipped"]) == ["broken"] and "image_unreadable" in result["skipped"]["broken"]
    per_sample = sum(good["token_keep"]) + 1  # its answer tokens and the end-of-turn token
    assert sorted({m["supervised_tokens"] for m in seen}) == [0.0, float(per_sample)]
    assert all(m["samples"] == (1.0 if m["supervised_tokens"] else 0.0) for m in seen)
    assert result["supervised_tokens"] == per_sample * sum(m["samples"] for m in seen)
    # a checkpoint folder that a killed run left half-written is not taken for a checkpoint
    (tmp_path / "run" / "checkpoints" / "checkpoint-6").mkdir(parents=True)
    assert RunFolder(str(tmp_path / "run")).checkpoint_steps(required=(SKIPPED_FILE,)) == [2, 4]
