"""Conversation formats: prompt_format=llava_v1 against an independent reimplementation of LLaVA's own rules.

The reference below is written from LLaVA's published training code (haotian-liu/LLaVA): ``conv_vicuna_v1``
in ``llava/conversation.py`` (``SeparatorStyle.TWO``: system prompt, ``sep=" "``, ``sep2="</s>"``),
``preprocess_multimodal`` and ``preprocess_v1`` in ``llava/train/train.py`` (the labels, by LLaVA's own
token-count arithmetic and its tokenization-mismatch check) and ``tokenizer_image_token`` in
``llava/mm_utils.py``. It shares no code with vig_udf.

The tokenizer is a tiny one that behaves like Vicuna's (Llama) tokenizer in what LLaVA's arithmetic relies
on: SentencePiece-style ``▁`` word prefixes (a trailing space is a token of its own, a space merges into the
next word), a prefix only at the start of the text (non-legacy: none after a special token, so
``</s>USER`` loses a token against ``USER`` alone, which is LLaVA's ``round_len -= 1``), BOS added to every
encoding, ``</s>`` and ``<image>`` special.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.conftest import random_image
from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.train.examples import IGNORE_INDEX, build_example

LLAVA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")
IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id for the image in input_ids
LEGACY = False  # the tokenizer below prefixes only the start of the text, like Llama's with legacy=False

RECORDS = {
    "one_turn": ([{"from": "human", "value": "<image>\nWhat colour is the circle?"},
                  {"from": "gpt", "value": "The circle is red."}], True),
    "multi_turn": ([{"from": "human", "value": "<image>\nWhat colour is the circle?"},
                    {"from": "gpt", "value": "Red."},
                    {"from": "human", "value": "And the square?"},
                    {"from": "gpt", "value": "The square is blue."},
                    {"from": "human", "value": "How many shapes are there?"},
                    {"from": "gpt", "value": "There are two shapes."}], True),
    "text_only": ([{"from": "human", "value": "What is a circle?"},
                   {"from": "gpt", "value": "A circle is a round shape."},
                   {"from": "human", "value": "And a square?"},
                   {"from": "gpt", "value": "A square has four sides."}], False),
    "image_at_the_end": ([{"from": "human", "value": "What colour is the triangle?\n<image>"},
                          {"from": "gpt", "value": "Green."},
                          {"from": "human", "value": "Is it large?"},
                          {"from": "gpt", "value": "No, it is small."}], True),
}


# ---- the reference: LLaVA's rules, written from its published code ------------------------------------

def llava_preprocess_multimodal(conversations: list[dict]) -> list[dict]:
    """The turn holding <image>: the placeholder removed, stripped, '<image>\\n' before it, stripped again."""
    out = []
    for turn in conversations:
        value = turn["value"]
        if "<image>" in value:
            value = ("<image>\n" + value.replace("<image>", "").strip()).strip()
        out.append({"from": turn["from"], "value": value})
    return out


def llava_v1_prompt(conversations: list[dict]) -> str:
    """conv_vicuna_v1.get_prompt(): system + sep, then role + ': ' + message + seps[i % 2] per message."""
    seps, roles = [" ", "</s>"], {"human": "USER", "gpt": "ASSISTANT"}
    prompt = LLAVA_SYSTEM + seps[0]
    for i, turn in enumerate(conversations):
        prompt += roles[turn["from"]] + ": " + turn["value"] + seps[i % 2]
    return prompt


def llava_tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """Each chunk around <image> tokenized on its own; the BOS kept once; IMAGE_TOKEN_INDEX between chunks."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = [chunks[0][0]] if offset else []
    for k, chunk in enumerate(chunks):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def llava_preprocess_v1(prompt: str, tokenizer, has_image: bool) -> tuple[list[int], list[int]]:
    """preprocess_v1's input ids and targets: each round (split at '</s>') masked up to ' ASSISTANT: ' by
    token counts, the answer and its '</s>' kept; LLaVA's mismatch check must hold."""
    ids = llava_tokenizer_image_token(prompt, tokenizer) if has_image else tokenizer(prompt).input_ids

    def count(text):
        return len(llava_tokenizer_image_token(text, tokenizer)) if has_image else len(tokenizer(text).input_ids)

    targets = list(ids)
    sep = " " + "ASSISTANT" + ": "
    cur_len = 1
    targets[:cur_len] = [IGNORE_INDEX] * cur_len
    for i, rou in enumerate(prompt.split("</s>")):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len, instruction_len = count(rou), count(parts[0]) - 2
        if i != 0 and not LEGACY:  # tokenizers >= 0.14 with a non-legacy tokenizer
            round_len -= 1
            instruction_len -= 1
        targets[cur_len:cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += round_len
    targets[cur_len:] = [IGNORE_INDEX] * (len(targets) - cur_len)
    assert cur_len == len(ids), f"LLaVA's tokenization mismatch: {cur_len} vs {len(ids)}"
    return ids, targets


# ---- a Vicuna-like tiny tokenizer and a LLaVA processor around it ----------------------------------------

def _texts() -> list[str]:
    return [LLAVA_SYSTEM, "USER ASSISTANT: \n"] + [t["value"] for conv, _ in RECORDS.values() for t in conv]


@pytest.fixture(scope="module")
def vicuna_processor():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import CLIPImageProcessorPil, LlavaProcessor, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    alphabet = sorted(set("".join(_texts()).replace("<image>", "").replace(" ", "")))
    # "USER" is one token, "▁" joins the next character (so "▁USER" is "▁" + "USER", and a trailing space is
    # "▁" alone): what makes LLaVA's "- 2" and "- 1" exact, as with Vicuna's vocabulary
    merges = [("U", "S"), ("E", "R"), ("US", "ER")] + [("▁", c) for c in alphabet]
    vocab = {t: i for i, t in enumerate(specials + ["▁"] + alphabet)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(image_processor=image_processor, tokenizer=fast, patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _collapsed(ids: np.ndarray, labels: np.ndarray, image_id: int) -> tuple[list[int], list[int]]:
    """ids and labels with the run of image tokens as one IMAGE_TOKEN_INDEX (as LLaVA's input_ids hold it)."""
    out_ids, out_labels = [], []
    for i, (t, lab) in enumerate(zip(ids.tolist(), labels.tolist())):
        if t == image_id:
            if i == 0 or ids[i - 1] != image_id:
                out_ids.append(IMAGE_TOKEN_INDEX)
                out_labels.append(IGNORE_INDEX)
            continue
        out_ids.append(t)
        out_labels.append(lab)
    return out_ids, out_labels


@pytest.mark.parametrize("name", list(RECORDS))
def test_llava_v1_gives_llavas_prompt_ids_and_supervised_positions(vicuna_processor, name):
    conversations, has_image = RECORDS[name]
    tok = vicuna_processor.tokenizer
    reference_prompt = llava_v1_prompt(llava_preprocess_multimodal(conversations))
    reference_ids, reference_targets = llava_preprocess_v1(reference_prompt, tok, has_image)

    builder = InputBuilder(vicuna_processor, prompt_format="llava_v1")
    conv = parse_conversation(conversations, has_image=has_image)
    text, _ = builder.render(conv, with_image=has_image)
    assert text == reference_prompt
    row = {"sample_id": name, "image_path": None, "image_bytes": _png(random_image(40, 40, 0)) if has_image else None,
           "conversations": conversations, "token_keep": None}
    example = build_example(builder, row, supervise_end_of_turn=True)
    ids, labels = _collapsed(example.seq.input_ids.numpy(), example.labels, tok.convert_tokens_to_ids("<image>"))
    assert ids == reference_ids
    assert labels == reference_targets
    supervised = [i for i, t in enumerate(reference_targets) if t != IGNORE_INDEX]
    eos = [i for i in supervised if reference_ids[i] == tok.eos_token_id]
    assert len(eos) == sum(t["from"] == "gpt" for t in conversations)  # the </s> of every round
    # the scorer scores the answers alone: the same positions without the </s>
    _, tokens = builder.build(conv, random_image(40, 40, 0) if has_image else None)
    scored = np.zeros(len(example.labels), dtype=np.int64)
    scored[tokens.positions] = 1
    _, scored = _collapsed(example.seq.input_ids.numpy(), np.where(scored == 1, 0, IGNORE_INDEX),
                           tok.convert_tokens_to_ids("<image>"))
    assert [i for i, t in enumerate(scored) if t != IGNORE_INDEX] == [i for i in supervised if i not in eos]


def test_the_text_after_the_image_is_tokenized_on_its_own_as_llava_does(vicuna_processor):
    """Tokenizing the prompt whole (the processor's way) gives other ids after the image: the check above
    would see it."""
    conversations, _ = RECORDS["one_turn"]
    prompt = llava_v1_prompt(llava_preprocess_multimodal(conversations))
    tok = vicuna_processor.tokenizer
    whole = [IMAGE_TOKEN_INDEX if t == tok.convert_tokens_to_ids("<image>") else t for t in tok(prompt).input_ids]
    assert whole != llava_preprocess_v1(prompt, tok, True)[0]


def test_a_format_is_a_declarative_definition(vicuna_processor):
    """A format given as data (as a config would): its roles, separators and end-of-turn text render."""
    from vig_udf.scoring.options import ScorerOptions

    plain = {"name": "plain", "system": "", "user": "Q", "assistant": "A", "role_sep": ": ", "sep": "\n",
             "end_of_turn": "</s>\n"}
    options = ScorerOptions(prompt_format=plain)
    builder = InputBuilder(vicuna_processor, prompt_format=options.prompt_format)
    conv = parse_conversation(RECORDS["multi_turn"][0], has_image=True)
    text, spans = builder.render(conv, with_image=True)
    assert text == ("Q: <image>\nWhat colour is the circle?\nA: Red.</s>\nQ: And the square?\nA: The square is "
                    "blue.</s>\nQ: How many shapes are there?\nA: There are two shapes.</s>\n")
    assert [text[s.start:s.end] for s in spans] == ["Red.", "The square is blue.", "There are two shapes."]
    assert [text[s.end:s.end_of_turn] for s in spans] == ["</s>\n"] * 3
    assert options.identity_options()["prompt_format"]["end_of_turn"] == "</s>\n"


def test_bad_formats_are_refused_with_the_choices(vicuna_processor, tiny_checkpoints):
    from pydantic import ValidationError
    from transformers import AutoProcessor

    from vig_udf.scoring.options import ScorerOptions

    with pytest.raises(ValidationError, match=r"prompt_format='llava_v2'; choose one of \('template', 'llava_v1'\)"):
        ScorerOptions(prompt_format="llava_v2")
    with pytest.raises(ValidationError, match="puts the image first"):
        ScorerOptions(prompt_format="llava_v1", image_placement="inline")
    with pytest.raises(ValidationError, match="end_of_turn"):
        ScorerOptions(prompt_format={"user": "Q", "assistant": "A"})  # a format must say how an answer ends
    with pytest.raises(ValueError, match="puts the image first"):
        InputBuilder(vicuna_processor, prompt_format="llava_v1", image_placement="inline")
    qwen = AutoProcessor.from_pretrained(tiny_checkpoints["qwen2_vl"])
    with pytest.raises(ValueError, match=r"writes the image as '<image>', but this processor .* expands '<\|image_pad\|>'"):
        InputBuilder(qwen, prompt_format="llava_v1")


def test_each_family_gets_its_default_format_and_padding(tiny_checkpoints):
    from transformers import AutoConfig, AutoProcessor

    from vig_udf.scoring.formats import FORMATS, checkpoint_defaults, declaration
    from vig_udf.tiny import CHATML_VISION_TEMPLATE

    expected = {"llava": ("llava_v1", "square"), "llava_next": ("llava_v1", "none"), "qwen2_vl": ("template", "none"),
                "qwen2_5_vl": ("template", "none"), "idefics3": ("template", "none"), "gemma3": ("template", "none")}
    for family, defaults in expected.items():
        processor = AutoProcessor.from_pretrained(tiny_checkpoints[family])
        assert checkpoint_defaults(AutoConfig.from_pretrained(tiny_checkpoints[family]), processor) == defaults, family
    llava = AutoProcessor.from_pretrained(tiny_checkpoints["llava"])
    config = AutoConfig.from_pretrained(tiny_checkpoints["llava"])
    assert checkpoint_defaults(config, llava, prompt_format="template") == ("template", "none")
    assert checkpoint_defaults(config, llava, image_pad="none") == ("llava_v1", "none")
    # a checkpoint that declares what it was trained with (training writes it) gets that
    config.vig_prompt = declaration("template", "none")
    assert checkpoint_defaults(config, llava) == ("template", "none")
    config.vig_prompt = declaration(FORMATS["llava_v1"], "square")
    assert checkpoint_defaults(config, llava) == (FORMATS["llava_v1"].model_dump(), "square")
    assert checkpoint_defaults(config, llava, prompt_format="template")[0] == "template"  # the options win
    llava.chat_template = CHATML_VISION_TEMPLATE  # a LLaVA-architecture model trained on ChatML (LLaVA-1.6-34B)
    assert checkpoint_defaults("llava", llava) == ("template", "none")


def test_the_format_and_the_padding_are_part_of_the_scorer_identity(tiny_checkpoints):
    from vig_udf import VIGScorer
    from vig_udf.scoring.formats import FORMATS

    path = tiny_checkpoints["llava"]
    default = VIGScorer.from_pretrained(path)
    assert (default.options.prompt_format, default.options.image_pad) == ("llava_v1", "square")
    explicit = VIGScorer.from_pretrained(path, prompt_format="llava_v1", image_pad="square")
    assert explicit.scorer_id == default.scorer_id
    ids = {VIGScorer.from_pretrained(path, **kw).scorer_id for kw in
           [{}, {"prompt_format": "template"}, {"image_pad": "none"},
            {"prompt_format": {**FORMATS["llava_v1"].model_dump(), "system": "Another system prompt."}}]}
    assert len(ids) == 4
