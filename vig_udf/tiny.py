"""Tiny random-weight vision-language checkpoints, built offline from configs, in standard HF layout.

Tests, benchmarks and the demo need real Hugging Face checkpoints of each supported family without a
hub: this module trains a small byte-level BPE tokenizer locally, writes a chat template in the style of
the family's released checkpoints, builds the model from its config, and saves model and processor
with ``save_pretrained`` so that they load through ``AutoProcessor`` / ``AutoModelForImageTextToText``
exactly like a downloaded checkpoint.

>>> path = build_tiny_checkpoint("llava", "/tmp/tiny-llava")  # doctest: +SKIP
>>> scorer = VIGScorer.from_pretrained(path)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3")

# Chat templates written for these checkpoints in the style of each family's released ones.
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] + ' ' }}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ ' ' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
CHATML_VISION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ message['role'].capitalize() + ':' }}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}{% else %}{{ ' ' + item['text'] }}{% endif %}"
    "{% endfor %}{{ '<end_of_utterance>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
# Gemma 3 style: the template writes the BOS, a system message opens the first user turn, the assistant is
# "model", text is trimmed, the image is the processor's <start_of_image> (expanded around its soft tokens)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'][0]['text'] + '\n\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% if loop.first %}{{ system }}{% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<start_of_image>' }}{% else %}{{ item['text'] | trim }}{% endif %}"
    "{% endfor %}{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_TOKENIZER_CORPUS = (
    "What is the colour of the object in the image? The banana is yellow. The apple is red and round. "
    "How many circles are there? There are three circles on the left side of the picture. "
    "Describe the image in detail. A small blue square sits above a large green triangle. "
    "Is the man to the left of the horse? Yes. No. Answer the question using a single word or phrase. "
    "Who wrote this book? What number is on the player's jersey? Please provide the bounding box. "
    "Use slicing to reverse a list in Python. 0 1 2 3 4 5 6 7 8 9 [0.41, 0.12, 0.58, 0.30]"
)


@dataclass(frozen=True)
class TinySize:
    """Dimensions of a tiny checkpoint; the defaults keep a forward pass to milliseconds on a CPU."""

    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 64
    vision_hidden_size: int = 32
    vision_layers: int = 2
    image_size: int = 32
    patch_size: int = 8


def build_tokenizer(special_tokens: list[str], *, vocab_size: int = 600, eos: str = "</s>", pad: str = "<pad>",
                    bos: str | None = "<s>", corpus: list[str] | None = None, named: dict[str, str] | None = None):
    """A byte-level BPE tokenizer trained locally (every string is encodable, no unknown token).

    ``named``: special tokens the tokenizer also exposes as attributes (``{"boi_token": "<start_of_image>"}``
    gives ``tokenizer.boi_token`` and ``tokenizer.boi_token_id``), as some families' processors expect."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    base_specials = [t for t in (pad, bos, eos) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=base_specials + [t for t in special_tokens if t not in base_specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus or [_TOKENIZER_CORPUS] * 4, trainer=trainer)
    extra = named if named is not None else ({} if not special_tokens else None)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=None, extra_special_tokens=extra,
        additional_special_tokens=[t for t in special_tokens if t not in base_specials and t not in (named or {}).values()],
    )


def build_tiny_checkpoint(family: str, out_dir: str | Path, *, size: TinySize = TinySize(), seed: int = 0,
                          tokenizer=None) -> str:
    """Build a random-weight checkpoint of ``family`` (one of :data:`FAMILIES`) and save it to ``out_dir``.

    Returns the directory, loadable with ``VIGScorer.from_pretrained``. Deterministic for a given seed.
    """
    builders = {
        "llava": _llava, "llava_next": _llava_next, "qwen2_vl": _qwen2_vl, "qwen2_5_vl": _qwen2_5_vl,
        "idefics3": _idefics3, "gemma3": _gemma3,
    }
    if family not in builders:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")
    torch.manual_seed(seed)
    model, processor = builders[family](size, tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


def _llama_text(size: TinySize, vocab: int, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads, max_position_embeddings=2048, **extra,
    )


def _clip_vision(size: TinySize):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=size.vision_hidden_size, intermediate_size=2 * size.vision_hidden_size,
        num_hidden_layers=size.vision_layers, num_attention_heads=4, image_size=size.image_size,
        patch_size=size.patch_size, projection_dim=size.vision_hidden_size,
    )


def _llava_tokenizer(tokenizer):
    tok = tokenizer or build_tokenizer(["<image>"])
    tok.chat_template = LLAVA_TEMPLATE
    return tok


def _llava(size: TinySize, tokenizer):
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _llava_tokenizer(tokenizer)
    config = LlavaConfig(
        vision_config=_clip_vision(size), text_config=_llama_text(size, len(tok), pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size.image_size}, crop_size={"height": size.image_size, "width": size.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=size.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE,
    )
    return LlavaForConditionalGeneration(config).eval(), processor


def _llava_next(size: TinySize, tokenizer):
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
                              LlavaNextProcessor)

    tok = _llava_tokenizer(tokenizer)
    s = size.image_size
    pinpoints = [[s, s], [s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
    config = LlavaNextConfig(
        vision_config=_clip_vision(size), text_config=_llama_text(size, len(tok), pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=size.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_TEMPLATE,
    )
    return LlavaNextForConditionalGeneration(config).eval(), processor


_QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                  "<|video_pad|>"]


def _qwen_parts(size: TinySize, tokenizer):
    tok = tokenizer or build_tokenizer(_QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", bos=None)
    tok.chat_template = CHATML_VISION_TEMPLATE
    head_dim = size.hidden_size // size.num_heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 4), half // 4, half // 4]
    text = dict(
        vocab_size=len(tok), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
        pad_token_id=tok.pad_token_id, bos_token_id=None, eos_token_id=tok.eos_token_id,
    )
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    return tok, text, ids


def _qwen_processor(cls, tok):
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLVideoProcessor

    # patch 14 merged 2x2: one image token per 28x28 pixels; a 56-112 px side gives 4 to 16 tokens.
    pixels = dict(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2)
    return cls(image_processor=Qwen2VLImageProcessorPil(**pixels), video_processor=Qwen2VLVideoProcessor(**pixels),
               tokenizer=tok, chat_template=CHATML_VISION_TEMPLATE)


def _qwen2_vl(size: TinySize, tokenizer):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    tok, text, ids = _qwen_parts(size, tokenizer)
    vision = dict(depth=size.vision_layers, embed_dim=size.vision_hidden_size, hidden_size=size.hidden_size,
                  num_heads=4, mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
    processor = _qwen_processor(Qwen2VLProcessor, tok)
    return Qwen2VLForConditionalGeneration(config).eval(), processor


def _qwen2_5_vl(size: TinySize, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    tok, text, ids = _qwen_parts(size, tokenizer)
    vision = dict(depth=size.vision_layers, hidden_size=size.vision_hidden_size, out_hidden_size=size.hidden_size,
                  intermediate_size=2 * size.vision_hidden_size, num_heads=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=56, fullatt_block_indexes=[size.vision_layers - 1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
    processor = _qwen_processor(Qwen2_5_VLProcessor, tok)
    return Qwen2_5_VLForConditionalGeneration(config).eval(), processor


def _idefics3(size: TinySize, tokenizer):
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor)

    specials = ["<|begin_of_text|>", "<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    tok = tokenizer or build_tokenizer(specials, eos="<end_of_utterance>", pad="<|finetune_pad|>", bos=None)
    tok.chat_template = IDEFICS3_TEMPLATE
    scale = 2
    vision = dict(hidden_size=size.vision_hidden_size, intermediate_size=2 * size.vision_hidden_size,
                  num_hidden_layers=size.vision_layers, num_attention_heads=4, image_size=size.image_size,
                  patch_size=size.patch_size)
    config = Idefics3Config(
        vision_config=vision, text_config=_llama_text(size, len(tok), pad_token_id=tok.pad_token_id).to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale,
    )
    # image splitting on, as in the released Idefics3 and SmolVLM processors: an image is resized to at most
    # 2 x 2 tiles of image_size (each with its <row_i_col_j> text) plus the global image
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 2 * size.image_size},
        max_image_size={"longest_edge": size.image_size},
    )
    seq_len = (size.image_size // size.patch_size) ** 2 // scale**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len,
                                  chat_template=IDEFICS3_TEMPLATE)
    return Idefics3ForConditionalGeneration(config).eval(), processor


def _gemma3(size: TinySize, tokenizer):
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor,
                              Gemma3TextConfig, SiglipVisionConfig)

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = tokenizer or build_tokenizer(["<start_of_turn>", "<end_of_turn>", *named.values()], eos="<eos>",
                                       pad="<pad>", bos="<bos>", named=named)
    tok.chat_template = GEMMA3_TEMPLATE
    per_side = size.image_size // size.patch_size
    tokens_per_image = (per_side // 2) ** 2  # the projector pools 2 x 2 patches into one token
    text = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads, num_key_value_heads=size.num_heads,
        head_dim=size.hidden_size // size.num_heads, max_position_embeddings=2048, sliding_window=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = SiglipVisionConfig(hidden_size=size.vision_hidden_size, intermediate_size=2 * size.vision_hidden_size,
                                num_hidden_layers=size.vision_layers, num_attention_heads=4,
                                image_size=size.image_size, patch_size=size.patch_size)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=tokens_per_image,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id)
    image_processor = Gemma3ImageProcessorPil(size={"height": size.image_size, "width": size.image_size})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, chat_template=GEMMA3_TEMPLATE,
                                image_seq_length=tokens_per_image)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # Gemma 3 initialises its projection to zeros: every image would look the same
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.5)
    return model, processor
