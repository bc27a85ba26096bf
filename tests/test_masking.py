"""The answer mask for a known template, against hand-written expectations."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.masking import answer_tokens, labels_for, render_with_answer_spans
from vig_udf.scoring.status import SampleError
from vig_udf.tiny import LLAVA_TEMPLATE

WORDS = ["<pad>", "</s>", "<image>", "USER", "ASSISTANT", ":", "?", ".", "What", "colour", "Red", "And",
         "size", "A", "small", "one", "is", "it"]


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per word or punctuation mark, so expected positions can be written by hand."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   additional_special_tokens=["<image>"])
    fast.chat_template = LLAVA_TEMPLATE
    return fast


CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat colour?"},
    {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "And size?"},
    {"from": "gpt", "value": "A small one"},
]


def test_multi_turn_mask_matches_hand_written_positions(word_tokenizer):
    conv = parse_conversation(CONVERSATION, has_image=True)
    text, spans = render_with_answer_spans(word_tokenizer, conv.to_messages(with_image=True), ["Red.", "A small one"])
    assert text == "USER: <image>\nWhat colour? ASSISTANT: Red.</s> USER: And size? ASSISTANT: A small one</s> "
    ids = word_tokenizer(text, add_special_tokens=False)["input_ids"]
    # 0 USER 1 : 2 <image> 3 What 4 colour 5 ? 6 ASSISTANT 7 : 8 Red 9 . 10 </s>
    # 11 USER 12 : 13 And 14 size 15 ? 16 ASSISTANT 17 : 18 A 19 small 20 one 21 </s>
    tokens = answer_tokens(word_tokenizer, text, spans, ids)
    assert tokens.positions.tolist() == [8, 9, 18, 19, 20]
    assert word_tokenizer.convert_ids_to_tokens(tokens.token_ids.tolist()) == ["Red", ".", "A", "small", "one"]
    assert tokens.turn.tolist() == [0, 0, 1, 1, 1]
    assert list(zip(tokens.char_start.tolist(), tokens.char_end.tolist())) == [(0, 3), (3, 4), (0, 1), (2, 7), (8, 11)]
    expected_labels = np.full(len(ids), -100)
    expected_labels[[8, 9, 18, 19, 20]] = [WORDS.index(w) for w in ["Red", ".", "A", "small", "one"]]
    np.testing.assert_array_equal(labels_for(ids, tokens), expected_labels)
    keep = np.array([True, False, False, True, True])
    expected_labels[[9, 18]] = -100
    np.testing.assert_array_equal(labels_for(ids, tokens, keep), expected_labels)


def test_mask_follows_image_token_expansion(word_tokenizer):
    """The processor expands <image> into many tokens; the mask moves with it."""
    conv = parse_conversation(CONVERSATION, has_image=True)
    text, spans = render_with_answer_spans(word_tokenizer, conv.to_messages(with_image=True), ["Red.", "A small one"])
    ids = word_tokenizer(text, add_special_tokens=False)["input_ids"]
    image_id = WORDS.index("<image>")
    expanded = ids[:2] + [image_id] * 5 + ids[3:]  # one placeholder became five image tokens
    tokens = answer_tokens(word_tokenizer, text, spans, expanded)
    assert tokens.positions.tolist() == [12, 13, 22, 23, 24]
    assert np.array_equal(tokens.token_ids, np.asarray(expanded)[[12, 13, 22, 23, 24]])


def test_answer_equal_to_template_text_is_found_after_the_generation_prompt(word_tokenizer):
    """An answer that also occurs in the template ("A" inside "ASSISTANT") is located in the answer."""
    conv = parse_conversation([{"from": "human", "value": "What colour?"}, {"from": "gpt", "value": "A"}],
                              has_image=False)
    text, spans = render_with_answer_spans(word_tokenizer, conv.to_messages(with_image=False), ["A"])
    assert text[spans[0].start:spans[0].end] == "A"
    assert spans[0].start == text.index("ASSISTANT:") + len("ASSISTANT: ")


def test_processor_ids_that_differ_after_the_image_are_refused(word_tokenizer):
    conv = parse_conversation(CONVERSATION, has_image=True)
    text, spans = render_with_answer_spans(word_tokenizer, conv.to_messages(with_image=True), ["Red.", "A small one"])
    ids = word_tokenizer(text, add_special_tokens=False)["input_ids"]
    ids[19] = WORDS.index("it")
    with pytest.raises(SampleError) as err:
        answer_tokens(word_tokenizer, text, spans, ids)
    assert err.value.status == "template_mismatch"
