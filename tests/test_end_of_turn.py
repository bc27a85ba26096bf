"""End-of-turn supervision: what each prompt writes after an answer, what training labels, and the warning
(or the failure) when a prompt writes no stop token, as llava-hf's released LLaVA-1.5 template does."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import random_image, sample
from tests.test_conventions import _tokenizer
from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.train.examples import IGNORE_INDEX, build_example

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
THREE_TURNS = [("What colour is the circle?", "Red."), ("And the square?", "It is blue."), ("Big?", "No")]


def _row(record: dict, keep=None, tokens=None) -> dict:
    """A training-set row of ``record``; ``keep`` over the scorer's ``tokens``, None = every answer token."""
    import io

    data = None
    if "image" in record:
        buf = io.BytesIO()
        record["image"].save(buf, format="PNG")
        data = buf.getvalue()
    row = {"sample_id": record["id"], "image_path": None, "image_bytes": data,
           "conversations": record["conversations"], "token_keep": keep}
    if tokens is not None:
        row.update(token_ids=tokens.token_ids.tolist(), token_turn=tokens.turn.tolist(),
                   token_char_start=tokens.char_start.tolist(), token_char_end=tokens.char_end.tolist())
    return row


def _released_llava_processor(tiny_checkpoints):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoints["llava"])
    processor.chat_template = (TEMPLATES / "llava-1.5-hf.jinja").read_text()
    return processor


def test_the_end_of_turn_text_of_each_prompt(tiny_checkpoints):
    from transformers import AutoProcessor

    def texts(processor, **kw):
        return InputBuilder(processor, **kw).end_of_turn_texts()

    qwen = _tokenizer(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"],
                      bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                      template=(TEMPLATES / "qwen2-vl-instruct.jinja").read_text())
    idefics3 = _tokenizer(["<|begin_of_text|>", "<image>", "<end_of_utterance>"], bos="<|begin_of_text|>",
                          eos="<end_of_utterance>", pad="<|finetune_pad|>",
                          template=(TEMPLATES / "idefics3-llama3.jinja").read_text())
    assert texts(_released_llava_processor(tiny_checkpoints)) == [None, None]  # it writes a space
    assert texts(_released_llava_processor(tiny_checkpoints), prompt_format="llava_v1") == ["</s>", "</s>"]
    assert texts(AutoProcessor.from_pretrained(tiny_checkpoints["llava"])) == ["</s>", "</s>"]  # the tiny template
    assert texts(qwen) == ["<|im_end|>\n", "<|im_end|>\n"]  # ChatML: the stop token and its newline
    assert texts(idefics3) == ["<end_of_utterance>\n", "<end_of_utterance>\n"]
    assert texts(AutoProcessor.from_pretrained(tiny_checkpoints["gemma3"])) == ["<end_of_turn>\n", "<end_of_turn>\n"]


def test_llava_v1_supervises_the_eos_after_every_answer_that_keeps_a_token(tiny_checkpoints):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoints["llava"])
    builder = InputBuilder(processor, prompt_format="llava_v1", image_pad="square")
    record = sample("m", THREE_TURNS, random_image(64, 48, 0))
    example = build_example(builder, _row(record), supervise_end_of_turn=True)
    ids, labels = example.seq.input_ids.numpy(), example.labels
    eos = processor.tokenizer.eos_token_id
    assert (ids == eos).sum() == 3 and (labels[ids == eos] == eos).all()  # every answer's </s>, labelled
    assert example.n_end_of_turn == 3
    # each </s> right after its answer's last token
    _, tokens = builder.build(parse_conversation(record["conversations"], has_image=True), record["image"])
    last = [int(tokens.positions[tokens.turn == k].max()) for k in range(3)]
    assert np.nonzero(ids == eos)[0].tolist() == [p + 1 for p in last]
    # a turn that keeps no token keeps no end-of-turn label either
    keep = (tokens.turn == 1).tolist()
    partial = build_example(builder, _row(record, keep, tokens), supervise_end_of_turn=True)
    assert np.nonzero((ids == eos) & (partial.labels != IGNORE_INDEX))[0].tolist() == [last[1] + 1]
    off = build_example(builder, _row(record), supervise_end_of_turn=False)
    assert off.n_end_of_turn == 0 and not (off.labels[ids == eos] != IGNORE_INDEX).any()


def test_chatml_supervises_im_end_and_its_newline(tiny_checkpoints):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoints["qwen2_vl"])
    record = sample("q", THREE_TURNS[:2], random_image(64, 48, 1))
    example = build_example(InputBuilder(processor), _row(record), supervise_end_of_turn=True)
    tok = processor.tokenizer
    supervised = tok.convert_ids_to_tokens(example.labels[example.labels != IGNORE_INDEX].tolist())
    assert example.n_end_of_turn == 4
    assert tok.decode(example.labels[example.labels != IGNORE_INDEX]).count("<|im_end|>\n") == 2
    assert supervised.count("<|im_end|>") == 2


def test_the_released_llava_template_supervises_no_stop_token_and_training_warns(tiny_checkpoints, caplog):
    from vig_udf.train.settings import TrainSettings
    from vig_udf.train.trainer import check_end_of_turn

    processor = _released_llava_processor(tiny_checkpoints)
    builder = InputBuilder(processor, prompt_format="template")
    example = build_example(builder, _row(sample("m", THREE_TURNS, random_image(64, 48, 0))),
                            supervise_end_of_turn=True)
    assert example.n_end_of_turn == 0
    assert not (example.labels == processor.tokenizer.eos_token_id).any()
    with caplog.at_level(logging.WARNING, logger="vig_udf.train.trainer"):
        assert check_end_of_turn(builder, TrainSettings(), rank=0) is None
    assert "writes no stop token after an answer" in caplog.text and "llava_v1" in caplog.text
    with pytest.raises(ValueError, match=r"writes no stop token.*require_end_of_turn=true"):
        check_end_of_turn(builder, TrainSettings(require_end_of_turn=True), rank=0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vig_udf.train.trainer"):  # not supervising: nothing to warn about
        assert check_end_of_turn(builder, TrainSettings(supervise_end_of_turn=False), rank=0) is None
    assert not caplog.text
    llava_v1 = InputBuilder(processor, prompt_format="llava_v1")
    assert check_end_of_turn(llava_v1, TrainSettings(require_end_of_turn=True), rank=0) == "</s>"
