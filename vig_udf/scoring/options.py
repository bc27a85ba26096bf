"""The scorer's options, declared once: the Python API, the job configs, ``vig score-file --set`` and the
scorer identity all read this class.

>>> ScorerOptions(counterfactual="drop").identity_options()["counterfactual"]
'drop'

An option marked ``identity`` changes scores and is part of the scorer id (:mod:`vig_udf.scoring.identity`); the
others change only speed, placement or where files are found, never a score beyond float tolerance.
``dtype``, ``device`` and ``batch_tokens`` default by device (:meth:`ScorerOptions.for_device`), ``prompt_format``
and ``image_pad`` by checkpoint (:meth:`ScorerOptions.for_checkpoint`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from vig_udf.scoring import formats
from vig_udf.scoring.conversation import DEFAULT_IMAGE_PLACEMENT, IMAGE_PLACEMENTS
from vig_udf.scoring.formats import ConversationFormat
from vig_udf.scoring.images import COUNTERFACTUALS, DEFAULT_BLUR_SIGMA

_IDENTITY = {"identity": True}
DTYPES = ("float32", "bfloat16", "float16")


class ScorerOptions(BaseModel):
    """Everything besides the model path that the scorer is built with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    counterfactual: str = Field("blur", description="blur | drop | blank | noise | mismatched (see "
                                "vig_udf.scoring.images)", json_schema_extra=_IDENTITY)
    counterfactuals: list[str] | None = Field(
        None, description="several counterfactuals scored in one pass over the data (one real-image pass per sample "
        "shared by all), each its own scorer id, e.g. [blur, mismatched, drop]; None = counterfactual alone")
    blur_sigma: float = Field(DEFAULT_BLUR_SIGMA, gt=0, description="Gaussian blur sigma as a fraction of the "
                              "image's shorter side (blur only)", json_schema_extra=_IDENTITY)
    partner_seed: int = Field(0, description="seed of the mismatched counterfactual's partner order (mismatched "
                              "only; vig_udf.scoring.partners)", json_schema_extra=_IDENTITY)
    partner_scope: Literal["source", "corpus"] = Field(
        "source", description="source: a partner from the sample's own source (the whole corpus for a source with "
        "one image); corpus: from the whole corpus (mismatched only)", json_schema_extra=_IDENTITY)
    image_placement: str = Field(DEFAULT_IMAGE_PLACEMENT, description="first: the image before the turn's text "
                                 "(LLaVA-1.5's training rule); inline: where the <image> placeholder is",
                                 json_schema_extra=_IDENTITY)
    chat_template: str | None = Field(None, description="Jinja chat template replacing the processor's; None = "
                                      "the processor's (the template used is part of the identity)")
    prompt_format: str | ConversationFormat | None = Field(
        None, description="template: the chat template; llava_v1: LLaVA's conv_vicuna_v1 conversation; or a format "
        "definition (vig_udf.scoring.formats); None = the checkpoint's (the one its config declares, as vig train "
        "writes it; else llava_v1 for LLaVA-1.5 and 1.6-vicuna, template for the others)", json_schema_extra=_IDENTITY)
    image_pad: Literal["none", "square"] | None = Field(
        None, description="square: pad images to a square of the processor's mean colour (LLaVA's expand2square) "
        "before the counterfactual is made; None = the checkpoint's (declared; else square for llava_v1 on LLaVA-1.5, "
        "none for the others)",
        json_schema_extra=_IDENTITY)
    exif_transpose: bool = Field(
        False, description="turn images as their EXIF orientation says before scoring; off: images as stored, as "
        "LLaVA's Image.open(...).convert('RGB') and this project's training loader read them",
        json_schema_extra=_IDENTITY)
    image_attribution: bool = Field(
        False, description="also score each image of a multi-image record alone: one extra pass per image with that "
        "image alone replaced by the counterfactual; the scores' image_vig holds each one's sample VIG",
        json_schema_extra=_IDENTITY)
    max_length: int | None = Field(None, gt=0, description="longer samples get status 'truncated'; None = no limit",
                                   json_schema_extra=_IDENTITY)
    dtype: str | None = Field(None, description="float32 | bfloat16 | float16; None = bf16 on GPU, fp32 on CPU",
                              json_schema_extra=_IDENTITY)
    max_image_pixels: int | None = Field(64_000_000, gt=0, description="larger images get 'image_unreadable' "
                                         "(guards decompression bombs)", json_schema_extra=_IDENTITY)
    revision: str | None = Field(None, description="hub branch, tag or commit; None = main (the resolved "
                                 "commit is part of the identity)")
    trust_remote_code: bool = Field(False, description="run the checkpoint's own Python code (off: nothing read "
                                    "from a checkpoint runs code)")
    attn_implementation: str = Field("sdpa", description="attention kernel: sdpa | eager | flash_attention_2")
    device: str | None = Field(None, description="cuda | cuda:N | cpu; None = cuda when available")
    batch_tokens: int | None = Field(None, gt=0, description="token budget of one forward batch (rows x padded "
                                     "length, both passes); None = 2048 on CPU, 32768 on GPU")
    image_root: str | None = Field(None, description="folder that relative image paths resolve against")
    prep_workers: int = Field(1, ge=0, description="background threads preparing the next samples while the "
                              "model runs; 0 = prepare in the calling thread")
    prep_chunk: int = Field(128, gt=0, description="samples prepared as one unit (batches are length-sorted "
                            "within it: larger pads less, smaller starts the model sooner)")
    stack_passes: bool = Field(True, description="run a sample's two passes in one batch when their token "
                               "layout is identical")

    @field_validator("counterfactual", "image_placement")
    @classmethod
    def _known_choice(cls, value: str, info: ValidationInfo) -> str:
        choices = {"counterfactual": COUNTERFACTUALS, "image_placement": IMAGE_PLACEMENTS}[info.field_name]
        if value not in choices:
            raise ValueError(f"{info.field_name}={value!r}; choose one of {choices}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _counterfactual_of_the_list(cls, data):
        """With ``counterfactuals``, ``counterfactual`` is the list's first (a given one must be in the list)."""
        if not isinstance(data, dict) or not data.get("counterfactuals"):
            return data
        names = list(data["counterfactuals"])
        given = data.get("counterfactual")
        if given is not None and given not in names and given != "blur":  # blur: the default, written back by dumps
            raise ValueError(f"counterfactual={given!r} is not in counterfactuals={names}: give one of them")
        return {**data, "counterfactual": given if given in names else names[0]}

    @field_validator("counterfactuals")
    @classmethod
    def _known_counterfactuals(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return None
        unknown = [n for n in names if n not in COUNTERFACTUALS]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"counterfactuals={names}: give distinct names among {COUNTERFACTUALS}")
        return names

    def counterfactual_names(self) -> list[str]:
        """The counterfactuals these options score: ``counterfactuals``, else ``counterfactual`` alone."""
        return list(self.counterfactuals or [self.counterfactual])

    def for_counterfactual(self, name: str) -> "ScorerOptions":
        """These options scoring ``name`` alone (the options of that counterfactual's scorer id)."""
        return self.model_copy(update={"counterfactual": name, "counterfactuals": None})

    @field_validator("prompt_format")
    @classmethod
    def _known_format(cls, value):
        if isinstance(value, str):
            formats.resolve_format(value)  # an unknown name fails with the choices
        return value

    @model_validator(mode="after")
    def _format_puts_the_image_first(self):
        if formats.resolve_format(self.prompt_format) is not None and self.image_placement != "first":
            raise ValueError(f"prompt_format={formats.format_name(self.prompt_format)} puts the image first (LLaVA's "
                             f"preprocess_multimodal); image_placement={self.image_placement!r} needs "
                             "prompt_format=template")
        return self

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, value):
        return None if value is None else str(value)  # a torch.device as its name

    @field_validator("dtype", mode="before")
    @classmethod
    def _dtype_name(cls, value):
        if value is None:
            return None
        name = str(value).removeprefix("torch.")
        if name not in DTYPES:
            raise ValueError(f"dtype={value!r}; choose one of {DTYPES}")
        return name

    @classmethod
    def from_kwargs(cls, **kwargs) -> "ScorerOptions":
        """Options from keyword arguments; an unknown name raises TypeError listing the known ones."""
        unknown = set(kwargs) - set(cls.model_fields)
        if unknown:
            raise TypeError(f"unknown scorer options {sorted(unknown)}; known: {sorted(cls.model_fields)}")
        return cls(**kwargs)

    def for_device(self, device_type: str) -> "ScorerOptions":
        """These options with the device-dependent defaults filled in (dtype and batch_tokens)."""
        gpu = device_type == "cuda"
        return self.model_copy(update={
            "dtype": self.dtype or ("bfloat16" if gpu else "float32"),
            "batch_tokens": self.batch_tokens or (32768 if gpu else 2048),
        })

    def for_checkpoint(self, config, processor) -> "ScorerOptions":
        """These options with ``prompt_format`` and ``image_pad`` filled in for the checkpoint (its config and
        its processor; :func:`vig_udf.scoring.formats.checkpoint_defaults`)."""
        prompt_format, image_pad = formats.checkpoint_defaults(config, processor, prompt_format=self.prompt_format,
                                                               image_pad=self.image_pad)
        return self.model_copy(update={"prompt_format": prompt_format, "image_pad": image_pad})

    def identity_options(self) -> dict:
        """The identity options and their values (blur_sigma only for the blur counterfactual, the partner rule's
        only for mismatched; a conversation format by its whole definition)."""
        values = {name: getattr(self, name) for name, field in type(self).model_fields.items()
                  if (field.json_schema_extra or {}).get("identity")}
        if self.counterfactual != "blur":
            values["blur_sigma"] = None
        if self.counterfactual != "mismatched":  # absent, as before mismatched existed: earlier scorer ids hold
            del values["partner_seed"], values["partner_scope"]
        values["prompt_format"] = formats.describe(self.prompt_format)
        if not values["exif_transpose"]:  # EXIF ignored, as before the option existed: earlier scorer ids hold
            del values["exif_transpose"]
        if not values["image_attribution"]:  # off, as before the option existed: earlier scorer ids hold
            del values["image_attribution"]
        return values
