"""The model's own conventions: image placement, one BOS, released chat templates, a float32 output head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.scoring.masking import labels_for

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
IMAGE_LAST = [{"from": "human", "value": "What color is the shape?\n<image>"}, {"from": "gpt", "value": "Red."},
              {"from": "human", "value": "And its size?"}, {"from": "gpt", "value": "It is small."}]
ANSWERS = ["Red.", "It is small."]


def _tokenizer(specials: list[str], *, bos: str | None, eos: str, pad: str, template: str, adds_bos: bool = False):
    from tokenizers.processors import TemplateProcessing

    from vig_udf.tiny import build_tokenizer

    tok = build_tokenizer(specials, bos=bos, eos=eos, pad=pad)
    if adds_bos:  # like Llama 3's tokenizer: BOS added to every encoding with special tokens on
        tok._tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.bos_token_id)])
    tok.chat_template = template
    return tok


def _answer_texts(tok, tokens) -> list[str]:
    return [tok.decode(tokens.token_ids[tokens.turn == k]).strip() for k in range(len(ANSWERS))]


def test_image_first_is_llavas_rule_and_inline_keeps_the_placeholder_place():
    conv = parse_conversation(IMAGE_LAST, has_image=True)
    first = conv.to_messages(with_image=True)[0]["content"]
    assert first == [{"type": "image"}, {"type": "text", "text": "What color is the shape?"}]
    inline = conv.to_messages(with_image=True, placement="inline")[0]["content"]
    assert inline == [{"type": "text", "text": "What color is the shape?"}, {"type": "image"}]
    # LLaVA's preprocess_multimodal: remove the placeholder, strip, image first (text in the middle kept as is)
    middle = parse_conversation([{"from": "human", "value": " Look: <image> what is it? "},
                                 {"from": "gpt", "value": "A cat"}], has_image=True)
    assert middle.to_messages(with_image=True)[0]["content"] == [{"type": "image"},
                                                                 {"type": "text", "text": "Look:  what is it?"}]
    assert middle.to_messages(with_image=False)[0]["content"] == [{"type": "text", "text": "Look:  what is it?"}]
    with pytest.raises(ValueError, match="image_placement"):
        conv.to_messages(with_image=True, placement="last")


def test_input_builder_renders_with_its_placement(tiny_checkpoints):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoints["llava"])
    conv = parse_conversation(IMAGE_LAST, has_image=True)
    text, _ = InputBuilder(processor).render(conv, with_image=True)
    assert text.startswith("USER: <image>\nWhat color is the shape? ASSISTANT:")
    text, _ = InputBuilder(processor, image_placement="inline").render(conv, with_image=True)
    assert text.startswith("USER: What color is the shape?<image>\n ASSISTANT:")


def test_a_template_that_writes_bos_gets_one_bos_with_a_bos_adding_tokenizer():
    template = "{{ bos_token }}" + (TEMPLATES / "llava-1.5-hf.jinja").read_text()
    tok = _tokenizer(["<image>"], bos="<s>", eos="</s>", pad="<pad>", template=template, adds_bos=True)
    assert tok("USER: hi")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds BOS
    seq, tokens = InputBuilder(tok).build(parse_conversation(IMAGE_LAST, has_image=True), None)
    ids = seq.input_ids.tolist()
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert _answer_texts(tok, tokens) == ANSWERS
    # a template without BOS keeps the tokenizer's: still exactly one
    plain = _tokenizer(["<image>"], bos="<s>", eos="</s>", pad="<pad>", adds_bos=True,
                       template=(TEMPLATES / "llava-1.5-hf.jinja").read_text())
    ids = InputBuilder(plain).build(parse_conversation(IMAGE_LAST, has_image=True), None)[0].input_ids.tolist()
    assert ids[0] == plain.bos_token_id and ids.count(plain.bos_token_id) == 1


@pytest.mark.parametrize("placement", ["first", "inline"])
def test_mask_on_released_llava_1_5_hf_template(placement):
    """llava-1.5-hf renders images before text whatever the item order, answers inside {% generation %}."""
    tok = _tokenizer(["<image>"], bos="<s>", eos="</s>", pad="<pad>", adds_bos=True,
                     template=(TEMPLATES / "llava-1.5-hf.jinja").read_text())
    builder = InputBuilder(tok, image_placement=placement)
    conv = parse_conversation(IMAGE_LAST, has_image=True)
    text, _ = builder.render(conv, with_image=True)
    assert text == ("USER: <image>\nWhat color is the shape? ASSISTANT: Red. USER: And its size? "
                    "ASSISTANT: It is small. ")
    seq, tokens = builder.build(conv, None, rendered=builder.render(conv, with_image=True))
    assert seq.input_ids.tolist().count(tok.bos_token_id) == 1
    assert _answer_texts(tok, tokens) == ANSWERS
    labels = labels_for(seq.input_ids.numpy(), tokens)
    assert tok.decode(labels[labels != -100]).replace(" ", "") == "".join(ANSWERS).replace(" ", "")


def test_mask_on_released_qwen2_vl_template():
    """Qwen2-VL renders items in order, has no generation tags and no BOS; placement decides the prompt."""
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]
    tok = _tokenizer(specials, bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                     template=(TEMPLATES / "qwen2-vl-instruct.jinja").read_text())
    conv = parse_conversation(IMAGE_LAST, has_image=True)
    first, _ = InputBuilder(tok).render(conv, with_image=True)
    assert first.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                            "<|vision_start|><|image_pad|><|vision_end|>What color is the shape?<|im_end|>\n")
    inline, _ = InputBuilder(tok, image_placement="inline").render(conv, with_image=True)
    assert "What color is the shape?<|vision_start|><|image_pad|><|vision_end|><|im_end|>" in inline
    builder = InputBuilder(tok)
    seq, tokens = builder.build(conv, None, rendered=builder.render(conv, with_image=True))
    assert _answer_texts(tok, tokens) == ANSWERS
    assert tok.convert_ids_to_tokens(int(seq.input_ids[tokens.positions[-1] + 1])) == "<|im_end|>"


def test_mask_on_released_idefics3_template_has_one_bos():
    """Idefics3-Llama3 writes <|begin_of_text|> itself; the Llama 3 tokenizer would add a second one."""
    specials = ["<|begin_of_text|>", "<image>", "<end_of_utterance>"]
    tok = _tokenizer(specials, bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<|finetune_pad|>",
                     adds_bos=True, template=(TEMPLATES / "idefics3-llama3.jinja").read_text())
    builder = InputBuilder(tok)
    conv = parse_conversation(IMAGE_LAST, has_image=True)
    text, _ = builder.render(conv, with_image=True)
    assert text.startswith("<|begin_of_text|>User:<image>What color is the shape?<end_of_utterance>\nAssistant: Red.")
    seq, tokens = builder.build(conv, None, rendered=(text, _))
    ids = seq.input_ids.tolist()
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert _answer_texts(tok, tokens) == ANSWERS


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_output_head_runs_in_float32_for_a_bf16_model(tiny_checkpoints, device):
    """bf16 logits are rounded (steps of 0.125 at 20); the answer-position head must be float32."""
    from transformers import AutoModelForImageTextToText

    from vig_udf.scoring.forward import Sequence, answer_logprobs

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["llava"], dtype=torch.bfloat16)
    model = model.to(device).eval()
    head = model.get_output_embeddings()
    assert head.weight.dtype == torch.bfloat16
    with torch.no_grad():
        head.weight.mul_(400.0)  # logits of order 20, where bf16 rounding is coarse
    ids = torch.randint(5, 200, (24,), generator=torch.Generator().manual_seed(0))
    positions = np.arange(8, 24)
    [got] = answer_logprobs(model, [Sequence(ids, {}, positions)], pad_token_id=0, device=device, dtype=torch.bfloat16)
    with torch.inference_mode():
        hidden = model.model(input_ids=ids[None].to(device), use_cache=False).last_hidden_state[0, positions - 1]
        rows, targets = torch.arange(len(positions)), ids[positions].to(device)
        exact = torch.log_softmax(hidden.float() @ head.weight.float().T, -1)[rows, targets].cpu().numpy()
        rounded = torch.log_softmax(head(hidden).float(), -1)[rows, targets].cpu().numpy()
        assert float((hidden.float() @ head.weight.float().T).abs().max()) > 5
    assert np.abs(rounded - exact).max() > 1e-3  # the bf16 head is measurably off here
    np.testing.assert_allclose(got, exact, atol=1e-5)


def test_training_renders_with_the_template_and_placement_the_scores_were_made_with(tiny_checkpoints):
    from transformers import AutoProcessor

    from vig_udf.spark.train_job import training_conventions
    from vig_udf.tiny import LLAVA_TEMPLATE
    from vig_udf.train.settings import TrainSettings

    path = tiny_checkpoints["llava"]
    scores_template = LLAVA_TEMPLATE.replace("upper() + ': '", "upper() + ' >> '").replace("'ASSISTANT:'",
                                                                                        "'ASSISTANT >>'")
    resolved = {"base_model": path, "scorer_chat_template": scores_template, "scorer_image_placement": "inline",
                "scorer_prompt_format": "template", "scorer_image_pad": "none"}
    settings, conventions = training_conventions(TrainSettings(base_model=path), resolved)
    assert conventions == {"chat_template_source": "scores", "image_placement": "inline",
                           "image_placement_source": "scores", "prompt_format_source": "scores",
                           "image_pad_source": "scores", "max_length": None, "max_length_source": "none"}
    assert (settings.prompt_format, settings.image_pad) == ("template", "none")
    processor = AutoProcessor.from_pretrained(path)
    processor.chat_template = settings.chat_template
    text, _ = InputBuilder(processor, image_placement=settings.image_placement,
                           prompt_format=settings.prompt_format).render(
        parse_conversation(IMAGE_LAST, has_image=True), with_image=True)
    assert text.startswith("USER >> What color is the shape?<image>\n ASSISTANT >> Red.")
    # told otherwise: the training settings win; another base model keeps its own template
    told, conventions = training_conventions(TrainSettings(base_model=path, chat_template="T", image_placement="first"),
                                             resolved)
    assert (told.chat_template, told.image_placement) == ("T", "first")
    assert conventions["chat_template_source"] == "training.chat_template"
    other, conventions = training_conventions(TrainSettings(base_model="other/model"), resolved)
    assert other.chat_template is None and conventions["chat_template_source"] == "base_model"
    old, conventions = training_conventions(TrainSettings(base_model=path), {"base_model": path})
    assert old.image_placement == "first" and conventions["image_placement_source"] == "default"


EXPECTED_END_OF_TURN = {"llava": "</s>", "llava_next": "</s>", "qwen2_vl": "<|im_end|>\n", "qwen2_5_vl": "<|im_end|>\n",
                        "idefics3": "<end_of_utterance>\n", "gemma3": "<end_of_turn>\n"}


@pytest.mark.parametrize("family", list(EXPECTED_END_OF_TURN))
def test_the_mask_of_every_family_with_its_default_prompt(tiny_checkpoints, family):
    """Each family's tiny checkpoint, its default prompt format and padding, a 4:3 image (Idefics3 splits it
    into tiles with <row_i_col_j> text, Gemma 3 expands <start_of_image>): the answer tokens decode to the
    answers, the end-of-turn tokens to the stop text, and there is at most one BOS."""
    from vig_udf import VIGScorer
    from tests.conftest import random_image

    scorer = VIGScorer.from_pretrained(tiny_checkpoints[family])
    conv = parse_conversation(IMAGE_LAST, has_image=True)
    seq, tokens = scorer.inputs.build(conv, random_image(64, 48, 0))
    tok = scorer.tokenizer
    assert _answer_texts(tok, tokens) == ANSWERS
    eot = [tok.decode(seq.input_ids[tokens.end_of_turn[tokens.end_of_turn_turn == k]]) for k in range(2)]
    assert eot == [EXPECTED_END_OF_TURN[family]] * 2
    ids = seq.input_ids.tolist()
    assert tok.bos_token_id is None or ids.count(tok.bos_token_id) <= 1
    if family == "idefics3":
        assert "<row_1_col_1>" in tok.decode(seq.input_ids) and seq.extras["pixel_values"].shape[1] > 1
