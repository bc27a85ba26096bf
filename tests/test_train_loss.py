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

    from vig_udf.conversation import parse_conversation
    from vig_udf.inputs import InputBuilder

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
    from vig_udf.inputs import InputBuilder
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
    from vig_udf.inputs import InputBuilder
    from vig_udf.spans import kept_char_spans
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


def test_loss_is_cross_entropy_over_exactly_the_selected_tokens(llava):
    from vig_udf.forward import collate
    from vig_udf.inputs import InputBuilder
    from vig_udf.train.examples import IGNORE_INDEX, build_example
    from vig_udf.train.loss import SelectiveLoss

    _, processor, model = llava
    builder = InputBuilder(processor)
    rows = [scored_row(processor, r, keep=alternate) for r in records()[:2]]
    examples = [build_example(builder, row) for row in rows]
    batch = collate([e.seq for e in examples], processor.tokenizer.pad_token_id)
    labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
    for i, e in enumerate(examples):
        labels[i, : len(e.labels)] = torch.as_tensor(e.labels)

    with torch.no_grad():
        loss_sum = SelectiveLoss(model)(batch, labels)
        logits = model(**batch).logits.float()
    manual, n = 0.0, 0
    for i, e in enumerate(examples):
        for pos in np.nonzero(e.labels != IGNORE_INDEX)[0]:
            manual -= torch.log_softmax(logits[i, pos - 1], -1)[e.labels[pos]].item()
            n += 1
    assert n == sum(e.n_supervised for e in examples) > 0
    assert loss_sum.item() / n == pytest.approx(manual / n, rel=1e-5, abs=1e-6)
    # HF's own loss over the same labels is the same mean
    assert model(**batch, labels=labels).loss.item() == pytest.approx(manual / n, rel=1e-5)

    other = labels.clone()
    other[other != IGNORE_INDEX] = IGNORE_INDEX
    first = np.nonzero(examples[0].labels != IGNORE_INDEX)[0][0]
    other[0, first] = labels[0, first]
    with torch.no_grad():
        assert SelectiveLoss(model)(batch, other).item() != pytest.approx(loss_sum.item())


def test_unselected_positions_get_no_gradient(llava):
    """The gradient reaching the final hidden states is zero everywhere except just before a selected token."""
    from vig_udf.forward import collate
    from vig_udf.inputs import InputBuilder
    from vig_udf.train.examples import IGNORE_INDEX, build_example
    from vig_udf.train.loss import SelectiveLoss

    _, processor, model = llava
    example = build_example(InputBuilder(processor), scored_row(processor, records()[0], keep=alternate))
    batch = collate([example.seq], processor.tokenizer.pad_token_id)
    labels = torch.as_tensor(example.labels)[None]
    captured = {}

    def keep_hidden(module, args, output):
        output.last_hidden_state.retain_grad()
        captured["hidden"] = output.last_hidden_state

    handle = model.model.register_forward_hook(keep_hidden)
    try:
        SelectiveLoss(model)(batch, labels).backward()
    finally:
        handle.remove()
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


def trained_weights(model_dir: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir).state_dict()


def test_training_lowers_the_loss_and_resume_gives_the_same_weights(llava, tmp_path):
    from vig_udf.train.trainer import train_selected

    path, processor, _ = llava
    data = write_train_set(processor, tmp_path / "train.parquet")
    full = train_selected(settings(path, steps=12, checkpoint_every=4), data, str(tmp_path / "full"))
    assert np.mean(full["losses"][-3:]) < np.mean(full["losses"][:3])
    assert full["supervised_tokens"] > 0 and not full["skipped"]

    class Interrupt(Exception):
        pass

    def stop_at_6(step, metrics):
        if step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_selected(settings(path, steps=12, checkpoint_every=4), data, str(tmp_path / "resumed"),
                       on_step=stop_at_6)
    # a checkpoint folder is shared storage: a pickle planted in it must not run at resume
    import pickle
    import shutil

    shutil.copytree(tmp_path / "resumed", tmp_path / "planted")
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for optimizer_file in (tmp_path / "planted").rglob("optimizer.pt"):
        optimizer_file.write_bytes(pickle.dumps(Planted()))
    with pytest.raises(pickle.UnpicklingError):
        train_selected(settings(path, steps=12, checkpoint_every=4), data, str(tmp_path / "planted"))
    assert not marker.exists()
    steps_seen = []
    resumed = train_selected(settings(path, steps=12, checkpoint_every=4), data, str(tmp_path / "resumed"),
                             on_step=lambda step, m: steps_seen.append(step))
    assert resumed["resumed_from_step"] == 4 and steps_seen == list(range(5, 13))
    assert resumed["losses"] == pytest.approx(full["losses"][4:], rel=1e-6)
    a, b = trained_weights(full["model_dir"]), trained_weights(resumed["model_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the vision tower stays frozen by default (LLaVA-1.5 instruction tuning)
    base = trained_weights(path)
    assert all(torch.equal(a[k], base[k]) for k in a if ".vision_tower." in k)
    assert any(not torch.equal(a[k], base[k]) for k in a if ".multi_modal_projector." in k)


def test_lora_trains_adapters_and_saves_a_merged_model(llava, tmp_path):
    from vig_udf.train.trainer import train_selected

    path, processor, _ = llava
    data = write_train_set(processor, tmp_path / "train.parquet", n_copies=2)
    result = train_selected(settings(path, method="lora", lora={"r": 4, "alpha": 8, "dropout": 0.0}), data,
                            str(tmp_path / "lora"))
    total = sum(result["parameters"].values())
    assert 0 < result["trainable_parameters"] < total / 2
    merged, base = trained_weights(result["model_dir"]), trained_weights(path)
    assert merged.keys() == base.keys()
    changed = [k for k in merged if not torch.equal(merged[k], base[k])]
    assert any(".language_model." in k for k in changed) and any(".multi_modal_projector." in k for k in changed)
    assert not any(".vision_tower." in k for k in changed)


def test_a_step_whose_samples_all_fail_supervises_nothing_and_is_reported(llava, tmp_path):
    """batch_size 1 over one good and one unreadable sample: the bad sample's steps train nothing."""
    from vig_udf.train.trainer import _checkpoints, train_selected

    path, processor, _ = llava
    good = scored_row(processor, records()[1])
    bad = {**good, "sample_id": "broken", "image_bytes": b"not an image"}
    data = str(tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist([good, bad]), data)
    seen = []
    result = train_selected(settings(path, steps=6, batch_size=1, checkpoint_every=2), data, str(tmp_path / "run"),
                            on_step=lambda step, m: seen.append(m))
    assert list(result["skipped"]) == ["broken"] and "image_unreadable" in result["skipped"]["broken"]
    assert {m["supervised_tokens"] for m in seen} == {0.0, float(sum(good["token_keep"]))}
    assert all(m["samples"] == (1.0 if m["supervised_tokens"] else 0.0) for m in seen)
    # a half-written checkpoint folder left by a killed run is not taken for a checkpoint
    (tmp_path / "run" / "checkpoints" / "step-0000004.tmp").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-0000004.tmp" / "state.json").write_text("{}")
    assert [p.name for p in _checkpoints(tmp_path / "run")] == ["step-0000002", "step-0000004"]
