"""VIGScorer: Visual Information Gain for LLaVA-format samples with any HF image-text-to-text model.

>>> scorer = VIGScorer.from_pretrained("llava-hf/llava-1.5-7b-hf", counterfactual="blur")  # doctest: +SKIP
>>> [r.vig for r in scorer.score([{"id": "1", "image": "cat.jpg", "conversations": [
...     {"from": "human", "value": "<image>\\nWhat colour is the cat?"},
...     {"from": "gpt", "value": "The cat is black."}]}])]  # doctest: +SKIP
[0.83]

Per sample: validate the conversation, render it with the prompt format (the processor's chat template
or a conversation format, vig_udf.scoring.formats), mark the answer tokens (vig_udf.scoring.masking),
load the image, pad it (``image_pad``) and make its counterfactual, run the processor for both.
Samples are prepared in chunks of ``prep_chunk``; a chunk's sequences are packed into length-sorted
batches under a token budget (a sample's two passes side by side when their token layout is identical)
and scored with logits at answer positions only. With ``prep_workers`` > 0 the next chunks are prepared
in background threads while the model runs the current one (``score_stream`` carries this across calls).
A failing sample gets its status and message, whatever it raises while being prepared; the others are
scored.

``counterfactual=mismatched`` takes the counterfactual image from another sample: each record carries it as
``counterfactual_image`` and names that sample in ``counterfactual_partner``
(:func:`vig_udf.scoring.partners.assign_partners` adds both by the partner rule; the score job joins them from
the corpus). A record without one gets ``no_partner``, as does one whose partner's image has the same pixels.

A record's ``image`` may be a list (one image per ``<image>`` placeholder): every image is loaded, each
counterfactual replaces all of them (:mod:`vig_udf.scoring.images`), and sample and token VIG keep their
definitions. With ``image_attribution=true`` each counterfactual also runs one pass per image with that image
alone replaced (``drop``: removed with its item), and ``image_vig`` holds the sample VIG of each such pass
(for a one-image record, its VIG, without an extra pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import torch

from vig_udf.scoring import formats
from vig_udf.scoring import status as st
from vig_udf.scoring.batching import chunk_ranges, plan_batches, prefetched
from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.forward import Sequence, answer_logprobs
from vig_udf.scoring.identity import model_fingerprint, scorer_identity
from vig_udf.scoring.images import image_refs, load_image, make_counterfactual, record_images
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.scoring.masking import AnswerTokens
from vig_udf.scoring.metric import sample_vig, token_vig
from vig_udf.scoring.options import ScorerOptions
from vig_udf.scoring.partners import image_key
from vig_udf.scoring.results import ScoreResult
from vig_udf.scoring.status import SampleError
from vig_udf.storage import model_folder

log = logging.getLogger(__name__)
REAL = 0  # the real-image pass is a prepared sample's first sequence; its counterfactuals' follow in order


@dataclass
class _Prepared:
    index: int
    sample_id: str
    tokens: AnswerTokens
    seqs: list[Sequence | None] = field(default_factory=list)  # [real, one per counterfactual (None: failed)]
    shared_layout: list[bool] = field(default_factory=list)  # per sequence: the real pass's token layout
    errors: dict[str, SampleError] = field(default_factory=dict)  # counterfactual -> why it cannot be scored
    partner: str | None = None  # the mismatched counterfactual's partner
    attribution: dict[str, list[int]] = field(default_factory=dict)  # counterfactual -> its per-image passes (seqs)


@dataclass
class _Chunk:
    """One prepared chunk of a ``score`` call: its unscored results and its samples ready to forward."""

    total: int  # samples in the whole call
    last: bool  # the call's last chunk
    done: dict[int, dict[str, ScoreResult]] = field(default_factory=dict)  # index -> counterfactual -> result
    prepared: list[_Prepared] = field(default_factory=list)


class VIGScorer:
    """Scores LLaVA-format samples with one model and processor in this process (no Spark)."""

    def __init__(self, model, processor, *, options: ScorerOptions, model_ref: dict, device, dtype=None,
                 storage=None):
        """A scorer around a loaded model and processor; ``model_ref`` is the model's fingerprint
        (:func:`vig_udf.scoring.identity.model_fingerprint`). ``dtype`` defaults to ``options.dtype``; an unset
        ``prompt_format`` / ``image_pad`` is the checkpoint's (:meth:`ScorerOptions.for_checkpoint`).
        ``storage`` (a :class:`vig_udf.storage.Storage`) reads images given as object-store URIs."""
        self.storage = storage
        self.device = torch.device(device)
        self.options = options.for_device(self.device.type).for_checkpoint(model.config, processor)
        if dtype is not None:
            self.options = self.options.model_copy(update={"dtype": str(dtype).removeprefix("torch.")})
        self.dtype = getattr(torch, self.options.dtype)
        self.counterfactuals = self.options.counterfactual_names()
        self.forwarded = 0  # sequences through the model so far (a real-image pass and each counterfactual's)
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.inputs = InputBuilder(processor, max_length=self.options.max_length,
                                   image_placement=self.options.image_placement,
                                   prompt_format=self.options.prompt_format, image_pad=self.options.image_pad)
        self._model_ref = model_ref
        self.batch_tokens = options.batch_tokens  # lowered after an out-of-memory (see _forward_halved)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    @classmethod
    def from_pretrained(cls, model_path: str, options: ScorerOptions | None = None, *, storage=None,
                        model_ref: dict | None = None,
                        **kwargs) -> "VIGScorer":
        """Load an image-text-to-text model and its processor (AutoModelForImageTextToText/AutoProcessor).

        Options are a :class:`~vig_udf.scoring.options.ScorerOptions` or its fields as keywords (``counterfactual``,
        ``blur_sigma``, ``image_placement``, ``prompt_format``, ``image_pad``, ``chat_template``, ``max_length``,
        ``dtype``, ``device``,
        ``batch_tokens``, ``revision``, ``attn_implementation``, ``trust_remote_code``, ...); an unknown
        keyword raises TypeError. device: defaults to ``cuda`` when available, else ``cpu``. dtype: bfloat16
        on CUDA, float32 on CPU. batch_tokens: 32768 on CUDA, 2048 on CPU (small batches measured faster on
        CPU, see BENCHMARKS.md). A hub model is loaded at the commit its identity names. A model folder on
        object storage (``s3a://...``) is copied once into this machine's cache (:func:`vig_udf.storage.cached_copy`)
        and loaded from there; ``storage`` reaches it and the images given as URIs.
        ``model_ref``: the model's fingerprint when the caller has already checked these files against it (a
        Spark worker, :func:`vig_udf.scoring.identity.verified_fingerprint`); None fingerprints them here.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if options is None:
            options = ScorerOptions.from_kwargs(**kwargs)
        elif kwargs:
            options = ScorerOptions.from_kwargs(**{**options.model_dump(exclude_unset=True), **kwargs})
        device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        options = options.for_device(device.type)
        model_path = model_folder(model_path, storage)
        model_ref = model_ref or model_fingerprint(model_path, options.revision)
        revision = model_ref.get("commit", options.revision)
        processor = AutoProcessor.from_pretrained(model_path, revision=revision,
                                                  trust_remote_code=options.trust_remote_code)
        if options.chat_template is not None:
            processor.chat_template = options.chat_template
        if not getattr(processor, "chat_template", None) and formats.resolve_format(options.prompt_format) is None:
            raise ValueError(f"{model_path} has no chat template; pass chat_template= (a Jinja template) or a "
                             "prompt_format to from_pretrained")
        dtype = getattr(torch, options.dtype)
        # device_map: each tensor goes from the memory-mapped file to the device, converted on the way, instead of
        # a whole converted copy in host memory first (benchmarks/load_memory.py)
        model = AutoModelForImageTextToText.from_pretrained(
            model_path, revision=revision, trust_remote_code=options.trust_remote_code, dtype=dtype,
            attn_implementation=options.attn_implementation, device_map={"": str(device)},
        ).eval()
        return cls(model, processor, options=options, model_ref=model_ref, device=device, storage=storage)

    @property
    def scorer_id(self) -> str:
        """Stable hash of everything that changes scores (see :mod:`vig_udf.scoring.identity`); a scorer of
        several counterfactuals has one per counterfactual (:attr:`scorer_ids`)."""
        if len(self.counterfactuals) > 1:
            raise ValueError(f"this scorer scores counterfactuals {self.counterfactuals}, each with its own id: "
                             "use scorer_ids")
        return self.scorer_ids[self.counterfactuals[0]]

    @property
    def scorer_ids(self) -> dict[str, str]:
        """Counterfactual -> the scorer id of its scores (the id a scorer of that counterfactual alone has)."""
        return {cf: scorer_identity(self._model_ref, self.options.for_counterfactual(cf),
                                    chat_template=self.processor.chat_template) for cf in self.counterfactuals}

    def score(self, samples: list[dict]) -> list[ScoreResult]:
        """Score LLaVA-format records; one :class:`ScoreResult` per input, in input order."""
        return self._single(self.score_all(samples))

    def score_stream(self, sample_lists: Iterable[list[dict]]) -> Iterator[list[ScoreResult]]:
        """Score lists of records one after another; yields each list's results like :meth:`score`
        (:meth:`score_stream_all` for a scorer of several counterfactuals)."""
        for by_counterfactual in self.score_stream_all(sample_lists):
            yield self._single(by_counterfactual)

    def score_all(self, samples: list[dict]) -> dict[str, list[ScoreResult]]:
        """Score LLaVA-format records under every counterfactual: counterfactual -> one result per input."""
        stream = self.score_stream_all([samples])
        try:
            return next(stream)
        finally:
            stream.close()

    def score_stream_all(self, sample_lists: Iterable[list[dict]]) -> Iterator[dict[str, list[ScoreResult]]]:
        """Score lists of records one after another; yields each list's results by counterfactual, like
        :meth:`score_all`. A sample's real-image pass is run once and shared by its counterfactuals.

        With ``prep_workers`` > 0, the next chunks (of this list or the next ones) are prepared in the
        background while the model scores the current chunk and while the caller handles a yielded list,
        so a caller that scores batch after batch (a Spark task) keeps the device busy. The next list is
        taken from ``sample_lists`` before the current one's results are yielded.
        """
        units = ((samples, part, part.stop == len(samples))
                 for samples in sample_lists for part in chunk_ranges(len(samples), self.options.prep_chunk))
        results: dict[str, list[ScoreResult | None]] = {}
        for chunk in prefetched(units, self._prepare_chunk, workers=self.options.prep_workers):
            if not results:
                results = {cf: [None] * chunk.total for cf in self.counterfactuals}
            for i, by_cf in chunk.done.items():
                for cf, result in by_cf.items():
                    results[cf][i] = result
            for item, logps in self._run(chunk.prepared):
                for cf, result in self._results(item, logps).items():
                    results[cf][item.index] = result
            if chunk.last:
                yield results
                results = {}

    def _single(self, by_counterfactual: dict[str, list[ScoreResult]]) -> list[ScoreResult]:
        if len(self.counterfactuals) > 1:
            raise ValueError(f"this scorer scores counterfactuals {self.counterfactuals}: use score_all / "
                             "score_stream_all")
        return by_counterfactual[self.counterfactuals[0]]

    def _results(self, item: _Prepared, logps) -> dict[str, ScoreResult]:
        """Counterfactual -> result of a forwarded sample (``logps``: its sequences' log-probs or an error)."""
        out = {}
        for j, cf in enumerate(self.counterfactuals, start=1):
            partner = item.partner if cf == "mismatched" else None
            if cf in item.errors:
                err = item.errors[cf]
                out[cf] = ScoreResult.unscored(item.sample_id, cf, err.status, err.message, partner=partner)
            elif isinstance(logps, str):
                out[cf] = ScoreResult.unscored(item.sample_id, cf, st.MODEL_ERROR, logps, partner=partner)
            else:
                image_vig = ([sample_vig(token_vig(logps[REAL], logps[a])) for a in item.attribution[cf]]
                             if cf in item.attribution else None)
                out[cf] = ScoreResult.scored(item.sample_id, cf, item.tokens, logps[REAL], logps[j], partner=partner,
                                             image_vig=image_vig)
        return out

    def _unscored(self, sample, sample_id: str, status: str, message: str | None, tokens=None):
        return {cf: ScoreResult.unscored(sample_id, cf, status, message, tokens,
                                         partner=self._partner_of(sample) if cf == "mismatched" else None)
                for cf in self.counterfactuals}

    # -- preparation (CPU): template, mask, images, processor ------------------------------------

    def _prepare_chunk(self, unit: tuple[list[dict], range, bool]) -> _Chunk:
        """Prepare samples ``part`` of ``samples`` (in a background thread when prefetching)."""
        samples, part, last = unit
        chunk = _Chunk(total=len(samples), last=last)
        for i in part:
            sample_id = _sample_id(samples[i], i)
            try:
                item = self._prepare(i, sample_id, samples[i])
            except SampleError as err:
                chunk.done[i] = self._unscored(samples[i], sample_id, err.status, err.message)
                continue
            except Exception as exc:  # whatever else one sample raises is that sample's status, never the call's
                log.warning("preparing sample %s failed: %s: %s", sample_id, type(exc).__name__, exc)
                chunk.done[i] = self._unscored(samples[i], sample_id, st.MODEL_ERROR,
                                               f"preparing the sample failed: {type(exc).__name__}: {exc}")
                continue
            if isinstance(item, dict):
                chunk.done[i] = item
            elif len(item.errors) == len(self.counterfactuals):  # no counterfactual to forward the real pass for
                chunk.done[i] = self._results(item, None)
            else:
                chunk.prepared.append(item)
        return chunk

    def _prepare(self, index: int, sample_id: str, sample: dict):
        if not isinstance(sample, dict):
            raise SampleError(st.INVALID_CONVERSATION, f"the record is a {type(sample).__name__}, not a JSON object "
                                                       "with 'conversations'")
        refs = record_images(sample)
        conv = parse_conversation(sample.get("conversations"), n_images=len(refs))
        if not refs:
            _, tokens = self.inputs.build(conv, None)
            return {cf: ScoreResult.unscored(sample_id, cf, st.TEXT_ONLY, None, tokens) for cf in self.counterfactuals}
        images = self._load_all(refs)
        rendered = self.inputs.render(conv, with_image=True)
        real, tokens = self._build_with_image(conv, images, rendered)
        item = _Prepared(index, sample_id, tokens, seqs=[real], shared_layout=[True], partner=self._partner_of(sample))
        attribution = {}
        for cf in self.counterfactuals:
            try:
                cf_images = self._counterfactual_images(cf, images, sample, sample_id)
                seq = self._counterfactual_pass(conv, images, cf_images, rendered, tokens)
                if self.options.image_attribution and len(images) > 1:
                    attribution[cf] = [self._counterfactual_pass(conv, images, cf_images, rendered, tokens, only=i)
                                       for i in range(len(images))]
            except SampleError as err:  # this counterfactual's alone: the sample's other counterfactuals go on
                item.errors[cf], seq = err, None
            except Exception as exc:
                log.warning("preparing the %s counterfactual of sample %s failed: %s: %s", cf, sample_id,
                            type(exc).__name__, exc)
                item.errors[cf], seq = SampleError(st.MODEL_ERROR, f"preparing the sample failed: "
                                                                   f"{type(exc).__name__}: {exc}"), None
            item.seqs.append(seq)
            if self.options.image_attribution and seq is not None and len(images) == 1:
                item.attribution[cf] = [len(item.seqs) - 1]  # one image: the counterfactual pass is its own
        for cf, passes in attribution.items():
            if cf not in item.errors:
                item.attribution[cf] = list(range(len(item.seqs), len(item.seqs) + len(passes)))
                item.seqs.extend(passes)
        item.shared_layout = [seq is not None and torch.equal(seq.input_ids, real.input_ids) for seq in item.seqs]
        return item

    def _counterfactual_images(self, cf: str, images: list, sample: dict, sample_id: str) -> list | None:
        """The counterfactual of each image (None for ``drop``: no image at all)."""
        if cf == "drop":
            return None
        if cf == "mismatched":
            return [self._partner_image(sample, images)] * len(images)
        return [make_counterfactual(image, cf, blur_sigma=self.options.blur_sigma,
                                    seed_key=sample_id if k == 0 else f"{sample_id}#{k}")
                for k, image in enumerate(images)]

    def _counterfactual_pass(self, conv, images: list, cf_images: list | None, rendered, tokens, *,
                             only: int | None = None):
        """The sequence with every image replaced by its counterfactual (``only``: image ``only`` alone), for a
        sample whose real-image pass has answer ``tokens``."""
        if cf_images is None and only is None:
            seq, cf_tokens = self.inputs.build(conv, None)
        elif cf_images is None:
            kept = [k != only for k in range(len(images))]
            seq, cf_tokens = self.inputs.build(conv, [im for k, im in enumerate(images) if k != only],
                                               rendered=self.inputs.render(conv, with_image=tuple(kept)))
        else:
            replaced = [cf_images[k] if only is None or k == only else im for k, im in enumerate(images)]
            seq, cf_tokens = self._build_with_image(conv, replaced, rendered)
        if not np.array_equal(cf_tokens.token_ids, tokens.token_ids):
            raise SampleError(st.TEMPLATE_MISMATCH, "the answer tokens differ between the image and the "
                                                    "counterfactual prompt; they cannot be aligned")
        return seq

    def _load_all(self, refs: list) -> list:
        """Every image of a record, loaded (an unreadable one named by its position when there are several)."""
        images = []
        for k, ref in enumerate(refs):
            try:
                images.append(self._load(ref))
            except SampleError as err:
                if len(refs) == 1:
                    raise
                raise SampleError(err.status, f"image {k + 1} of {len(refs)}: {err.message}") from None
        return images

    def _load(self, image_ref):
        """The image as the model gets it (loaded, turned as asked, padded)."""
        return self.inputs.prepare_image(load_image(image_ref, image_root=self.options.image_root,
                                                    max_pixels=self.options.max_image_pixels, storage=self.storage,
                                                    exif_transpose=self.options.exif_transpose))

    def _partner_of(self, sample) -> str | None:
        """The id of the record's mismatched partner (None for the other counterfactuals)."""
        if "mismatched" not in self.counterfactuals or not isinstance(sample, dict):
            return None
        partner = sample.get("counterfactual_partner")
        return None if partner is None else str(partner)

    def _partner_image(self, sample: dict, images: list):
        """The mismatched counterfactual: the partner's (first) image, loaded like the sample's own."""
        partner, refs = sample.get("counterfactual_partner"), image_refs(sample.get("counterfactual_image"))
        ref = refs[0] if refs else None
        if ref is None or (isinstance(ref, str) and not ref):
            raise SampleError(st.NO_PARTNER, "no other sample with a different image to take the mismatched "
                                             "counterfactual from (the record has no counterfactual_image; "
                                             "vig_udf.scoring.partners.assign_partners adds it)")
        try:
            other = self._load(ref)
        except SampleError as err:
            raise SampleError(err.status, f"the image of counterfactual partner {partner}: {err.message}") from None
        if image_key(other) in {image_key(image) for image in images}:
            raise SampleError(st.NO_PARTNER, f"counterfactual partner {partner} shows the same image (same pixels)")
        return other

    def _build_with_image(self, conv, images: list, rendered):
        """``inputs.build`` with images; the processor refusing them is the sample's ``image_unsupported``."""
        try:
            return self.inputs.build(conv, images, rendered=rendered)
        except SampleError:
            raise
        except Exception as exc:  # e.g. Qwen2-VL: "absolute aspect ratio must be smaller than 200"
            sizes = ", ".join(f"{im.size[0]}x{im.size[1]}" for im in images)
            what = f"the {sizes} image" if len(images) == 1 else f"the {len(images)} images ({sizes})"
            raise SampleError(st.IMAGE_UNSUPPORTED, f"the processor refused {what}: "
                                                    f"{type(exc).__name__}: {exc}") from exc

    # -- forward passes (GPU) ----------------------------------------------------------------------

    def _run(self, prepared: list[_Prepared]):
        """Yield (item, [logp of each sequence]) or (item, error message) for every prepared sample.

        A sample's sequences with the real pass's token layout run stacked in one group (``stack_passes``);
        the others (``drop``, an image of another size) each in a group of their own."""
        groups, members = [], []
        for item in prepared:
            present = [j for j, seq in enumerate(item.seqs) if seq is not None]
            stacked = [j for j in present if item.shared_layout[j]] if self.options.stack_passes else [REAL]
            apart = [[j] for j in present if j not in stacked]
            for group in [stacked, *apart]:
                groups.append((len(item.seqs[group[0]]), len(group)))
                members.append([(item, j) for j in group])
        logps: dict[int, list] = {item.index: [None] * len(item.seqs) for item in prepared}
        failed: dict[int, str] = {}
        for batch in self._batches(groups, members):
            flat = [m for g in batch for m in members[g]]
            for (item, which), lp in zip(flat, self._forward_isolating(flat, failed)):
                if lp is not None:
                    logps[item.index][which] = lp
        for item in prepared:
            if item.index in failed:
                yield item, failed[item.index]
            else:
                yield item, logps[item.index]

    def _batches(self, groups, members):
        """Token-budget batches; sequences with image inputs and without (``drop``) never share one, nor
        (with ``stack_passes=False``) the real-image and the counterfactual passes."""
        def kind(group_members):
            item, which = group_members[0]
            has_inputs = bool(item.seqs[which].extras)
            return (not has_inputs, -1 if len(group_members) > 1 else which)

        kinds = [kind(m) for m in members]
        for key in sorted(set(kinds)):
            idx = [g for g in range(len(groups)) if kinds[g] == key]
            for batch in plan_batches([groups[g] for g in idx], budget=self.batch_tokens):
                yield [idx[b] for b in batch]

    def _forward_isolating(self, flat, failed: dict[int, str]):
        """Forward a batch; one bad sample fails alone, and the device's own failures are not a sample's.

        Out of memory: the batch is halved (a sample's passes kept together, then apart) down to one
        sequence, and only a sequence that does not fit alone gets ``model_error``. A fatal device error
        (a CUDA error such as a device-side assert) is raised: the process's device state is lost, so the
        task must fail and be retried in a fresh worker. Any other error: each sample is retried alone.
        """
        seqs = [item.seqs[which] for item, which in flat]
        try:
            out = answer_logprobs(self.model, seqs, pad_token_id=self.pad_token_id, device=self.device,
                                  dtype=self.dtype)
            self.forwarded += len(seqs)
            return out
        except Exception as exc:
            if _out_of_memory(exc):
                return self._forward_halved(flat, failed, exc)
            if _fatal_device_error(exc):
                raise
            if len({item.index for item, _ in flat}) == 1:
                item = flat[0][0]
                failed[item.index] = f"forward pass failed: {type(exc).__name__}: {exc}"
                return [None] * len(flat)
            log.warning("batch of %d sequences failed (%s); retrying sample by sample", len(flat), exc)
        return self._forward_parts(flat, failed, [[p] for p in _positions_by_sample(flat)])

    def _forward_halved(self, flat, failed: dict[int, str], exc: Exception):
        """After an out-of-memory: the two halves of ``flat`` one after the other. Later batches are planned
        under half the failed batch's tokens, so that the same budget does not fail batch after batch."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        failed_tokens = len(flat) * max(len(item.seqs[which]) for item, which in flat)
        if failed_tokens // 2 < self.batch_tokens:
            self.batch_tokens = max(1, failed_tokens // 2)
            log.warning("out of memory at %d batch tokens: later batches get at most %d (batch_tokens=%d)",
                        failed_tokens, self.batch_tokens, self.options.batch_tokens)
        samples = _positions_by_sample(flat)
        if len(flat) == 1:
            item, which = flat[0]
            failed[item.index] = (f"out of memory with this sequence alone ({len(item.seqs[which])} tokens; "
                                  f"lower batch_tokens or max_length): {type(exc).__name__}: {exc}")
            return [None]
        log.warning("out of memory on a batch of %d sequences; retrying it in two halves", len(flat))
        if len(samples) == 1:  # one sample's stacked passes: run them apart
            return self._forward_parts(flat, failed, [[[p]] for p in range(len(flat))])
        half = len(samples) // 2
        return self._forward_parts(flat, failed, [samples[:half], samples[half:]])

    def _forward_parts(self, flat, failed: dict[int, str], parts: list[list[list[int]]]):
        """Forward each part (a list of samples, each a list of positions in ``flat``) as its own batch."""
        results: list = [None] * len(flat)
        for part in parts:
            positions = [p for sample_positions in part for p in sample_positions]
            for p, lp in zip(positions, self._forward_isolating([flat[p] for p in positions], failed)):
                results[p] = lp
        return results


def _positions_by_sample(flat) -> list[list[int]]:
    """Positions in ``flat`` grouped by sample, in order of first appearance."""
    by_sample: dict[int, list[int]] = {}
    for pos, (item, _) in enumerate(flat):
        by_sample.setdefault(item.index, []).append(pos)
    return list(by_sample.values())


def _out_of_memory(exc: Exception) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError)
                                                      and "out of memory" in str(exc).lower())


# Errors after which a CUDA context is unusable (every later call fails too): the task must not go on
_FATAL_DEVICE_MESSAGES = ("cuda error", "cublas_status", "cudnn_status", "cudnn error", "device-side assert",
                          "illegal memory access", "nccl error", "unspecified launch failure")


def _fatal_device_error(exc: Exception) -> bool:
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    message = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in message for m in _FATAL_DEVICE_MESSAGES)


def _sample_id(sample, index: int) -> str:
    if isinstance(sample, dict) and sample.get("id") is not None:
        return str(sample["id"])
    return f"#{index}"
