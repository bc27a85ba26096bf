"""``vig check``: does a scorer measure grounding? A sanity check on a sample of a corpus, before scoring it all.

VIG only means something when the scoring model reads the image and the counterfactual removes what the
answers need. The check scores a sample of image records under five image conditions with the scorer's own
API (:meth:`VIGScorer.score`, so every family the scorer supports works):

- ``real``: the record's image;
- ``counterfactual``: the scorer's configured counterfactual of it (blur, blank, noise or drop);
- ``partial``: the real image with its right half taken from another sample's image ("partly matching");
- ``mismatched``: another sample's image (the records scored with swapped images);
- ``none``: no image in the prompt (the ``drop`` counterfactual).

and reports, per sample (answer log-likelihoods summed over the answer tokens, NLLs as means):

- the ordering of the paper's Table 1: sample VIG with the matching, the partly matching and the mismatched
  image, each against the counterfactual of that image (the paper's numbers on COCO with LLaVA-1.5:
  0.923 > 0.409 > -0.520);
- the share of answers whose likelihood drops when the image is another sample's;
- how much of the image's gain over the no-image prompt the counterfactual keeps
  (``retained = mean(nll_none - nll_cf) / mean(nll_none - nll_real)``: 0 = as uninformative as no image,
  1 = as informative as the real image), and the same against the mismatched image;
- the answer tokens with the most negative VIG (format artifacts show up there).

:func:`check_scorer` measures and decides (:class:`CheckThresholds`), :mod:`vig_udf.report.check_report`
writes the markdown, HTML and PNG report. No Spark here: :mod:`vig_udf.spark.check_job` samples a Delta
corpus table or Parquet, :func:`sample_records` a JSON or JSONL file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from vig_udf.scoring.images import load_image
from vig_udf.scoring.partners import image_key, next_different
from vig_udf.scoring.status import OK, SampleError

CONDITIONS = ("real", "counterfactual", "partial", "mismatched", "none")
PAPER_TABLE1 = {"matching": 0.923, "partly matching": 0.409, "conflicting": -0.520}
MULTI_IMAGE = "several images (the check's conditions replace a record's one image)"  # a skip reason
IDENTICAL_TOLERANCE = 1e-6  # |token VIG| below this everywhere: the counterfactual did not change the answer's odds


@dataclass(frozen=True)
class CheckThresholds:
    """When the check passes (each threshold is a number in the verdict line).

    min_matching_vig: mean sample VIG with the real image must exceed this (the image helps at all).
    min_mismatch_drop_share: at least this share of answers must be less likely with another sample's image.
    max_retained: the counterfactual may keep at most this share of the image's gain over the no-image prompt.
    max_identical_share: samples whose counterfactual left every token's likelihood unchanged, at most.
    """

    min_matching_vig: float = 0.0
    min_mismatch_drop_share: float = 0.6
    max_retained: float = 0.5
    max_identical_share: float = 0.1


@dataclass
class SampleConditions:
    """One checked sample: its answer tokens and their log-probabilities under every image condition."""

    sample_id: str
    answers: list[str]
    image: Image.Image
    mismatched_id: str
    token_turn: np.ndarray
    token_char_start: np.ndarray
    token_char_end: np.ndarray
    logp: dict[str, np.ndarray]  # condition -> [n tokens]
    cf_logp: dict[str, np.ndarray]  # "partial" / "mismatched" -> logp under the counterfactual of that image

    def vig(self, condition: str = "real") -> np.ndarray:
        """Token VIG of ``condition``'s image against the counterfactual of that same image."""
        base = self.logp["counterfactual"] if condition == "real" else self.cf_logp[condition]
        return self.logp[condition] - base

    def nll(self, condition: str) -> float:
        return float(-self.logp[condition].mean())


@dataclass
class CheckResult:
    """What :func:`check_scorer` measured and decided. ``summary`` holds every number of the report."""

    scorer_id: str
    counterfactual: str
    samples: list[SampleConditions]
    skipped: dict[str, int]  # reason -> samples left out (unreadable image, not scored, ...)
    summary: dict
    thresholds: CheckThresholds
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def verdict(self) -> str:
        """One line: PASS or FAIL with the numbers it rests on."""
        s, t = self.summary, self.thresholds
        order = "holds" if s["ordering_holds"] else "does NOT hold"
        line = (f"vig check {'PASS' if self.passed else 'FAIL'} (n={s['n']}, counterfactual {self.counterfactual}): "
                f"sample VIG matching {_f(s['vig_matching'])}, partly {_f(s['vig_partial'])}, mismatched "
                f"{_f(s['vig_mismatched'])}: the ordering matching > partly > mismatched {order} (paper, COCO: "
                f"0.923 > 0.409 > -0.520); a mismatched image lowers the answer likelihood in "
                f"{_pct(s['mismatch_drop_share'])} of answers (need >= {_pct(t.min_mismatch_drop_share)}); the "
                f"counterfactual keeps {_pct(s['retained_none'])} of the image's gain over no image "
                f"(need <= {_pct(t.max_retained)})")
        if self.failures:
            line += "; failed: " + "; ".join(self.failures)
        return line


def _f(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.3f}"


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0%}"


# ----------------------------------------------------------------------------------------------------
# images of the conditions


def partly_matching(real: Image.Image, other: Image.Image) -> Image.Image:
    """The real image with its right half replaced by the right half of ``other`` (resized to the same size)."""
    out = real.copy()
    width, height = real.size
    other = other.resize((width, height))
    half = width // 2
    out.paste(other.crop((half, 0, width, height)), (half, 0))
    return out


def _with_image(record: dict, image: Image.Image, partner: tuple[str, Image.Image] | None = None) -> dict:
    """``record`` showing ``image``; with ``partner`` (id, image), also the other image that a scorer of the
    ``mismatched`` counterfactual compares it with."""
    if partner is None:
        return {**record, "image": image}
    return {**record, "image": image, "counterfactual_partner": partner[0], "counterfactual_image": partner[1]}


def drop_variant(scorer):
    """The same model and processor scoring against the no-image prompt (``drop``)."""
    return type(scorer)(scorer.model, scorer.processor, options=scorer.options.for_counterfactual("drop"),
                        model_ref=scorer._model_ref, device=scorer.device)


# ----------------------------------------------------------------------------------------------------
# measuring


def score_conditions(scorer, records: list[dict]) -> tuple[list[SampleConditions], dict[str, int]]:
    """Score ``records`` (LLaVA records with an image) under every condition of :data:`CONDITIONS`.

    Returns the samples scored ``ok`` under all of them and the count of the others by reason.
    """
    skipped: dict[str, int] = {}
    loaded, images = [], []
    for record in records:
        image = one_image(record)
        if isinstance(image, list):  # the partly matching and mismatched conditions replace one image
            skipped[MULTI_IMAGE] = skipped.get(MULTI_IMAGE, 0) + 1
            continue
        record = {k: v for k, v in record.items() if k != "images"}
        try:
            image = load_image(image, image_root=scorer.options.image_root,
                               max_pixels=scorer.options.max_image_pixels,
                               exif_transpose=scorer.options.exif_transpose)
        except SampleError as err:
            skipped[err.status] = skipped.get(err.status, 0) + 1
            continue
        loaded.append({**record, "id": str(record.get("id", len(loaded)))})
        images.append(image)
    if not loaded:
        return [], skipped
    # the samples' own order, not the corpus rule's rank: the check compares conditions on the same draw
    partners = next_different([image_key(im) for im in images])
    if loaded and all(p < 0 for p in partners):
        raise ValueError("every sampled record has the same image: a mismatched image needs at least two images")
    # a scorer whose own counterfactual is mismatched compares each condition's image with the next other one
    other = ((lambda i: (loaded[i]["id"], images[i])) if scorer.options.counterfactual == "mismatched"
             else (lambda i: None))
    real = [_with_image(r, im, other(p)) for r, im, p in zip(loaded, images, partners)]
    mismatched = [_with_image(r, images[p], other(partners[p])) for r, p in zip(loaded, partners)]
    partial = [_with_image(r, partly_matching(im, images[p]), other(p)) for r, im, p in zip(loaded, images, partners)]
    runs = {"real": scorer.score(real), "partial": scorer.score(partial), "mismatched": scorer.score(mismatched),
            "none": drop_variant(scorer).score(real)}
    samples = []
    for i, record in enumerate(loaded):
        results = {name: run[i] for name, run in runs.items()}
        bad = [f"{name}: {r.status}" for name, r in results.items() if r.status != OK]
        if bad:
            reason = "not scored ok (" + ", ".join(sorted({b.split(': ')[1] for b in bad})) + ")"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        base = results["real"]
        if any(not np.array_equal(r.token_ids, base.token_ids) for r in results.values()):
            skipped["answer tokens differ between conditions"] = skipped.get(
                "answer tokens differ between conditions", 0) + 1
            continue
        samples.append(SampleConditions(
            sample_id=record["id"], image=images[i], mismatched_id=loaded[partners[i]]["id"],
            answers=[t.get("value", "") for t in record.get("conversations") or [] if t.get("from") == "gpt"],
            token_turn=base.token_turn, token_char_start=base.token_char_start, token_char_end=base.token_char_end,
            logp={"real": base.logp_with.astype(np.float64), "counterfactual": base.logp_without.astype(np.float64),
                  "partial": results["partial"].logp_with.astype(np.float64),
                  "mismatched": results["mismatched"].logp_with.astype(np.float64),
                  "none": results["none"].logp_without.astype(np.float64)},
            cf_logp={"partial": results["partial"].logp_without.astype(np.float64),
                     "mismatched": results["mismatched"].logp_without.astype(np.float64)}))
    return samples, skipped


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    den = float(np.mean(denominator)) if denominator.size else math.nan
    return float(np.mean(numerator)) / den if den > 0 else math.nan


def summarise(samples: list[SampleConditions], *, top_k: int = 15) -> dict:
    """Every number of the report from the scored samples (see the module docstring)."""
    n = len(samples)
    if n == 0:
        return {"n": 0, "vig_matching": math.nan, "vig_partial": math.nan, "vig_mismatched": math.nan,
                "ordering_holds": False, "mismatch_drop_share": math.nan, "retained_none": math.nan,
                "retained_mismatched": math.nan, "identical_share": math.nan, "nll": {}, "per_sample": {},
                "negative_tokens": [], "negative_token_strings": []}
    per_sample = {cond: np.asarray([s.vig(cond).mean() for s in samples])
                  for cond in ("real", "partial", "mismatched")}
    nll = {cond: np.asarray([s.nll(cond) for s in samples]) for cond in CONDITIONS}
    means = {cond: float(v.mean()) for cond, v in per_sample.items()}
    identical = np.asarray([np.all(np.abs(s.vig("real")) < IDENTICAL_TOLERANCE) for s in samples])
    return {
        "n": n,
        "vig_matching": means["real"], "vig_partial": means["partial"], "vig_mismatched": means["mismatched"],
        "vig_sem": {cond: float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan for cond, v in per_sample.items()},
        "ordering_holds": bool(means["real"] > means["partial"] > means["mismatched"]),
        "mismatch_drop_share": float(np.mean(nll["mismatched"] > nll["real"])),
        "retained_none": _ratio(nll["none"] - nll["counterfactual"], nll["none"] - nll["real"]),
        "retained_mismatched": _ratio(nll["mismatched"] - nll["counterfactual"], nll["mismatched"] - nll["real"]),
        "identical_share": float(identical.mean()),
        "cf_none_mean_abs_gap": float(np.mean(np.abs(nll["counterfactual"] - nll["none"]))),
        "cf_real_mean_abs_gap": float(np.mean(np.abs(nll["counterfactual"] - nll["real"]))),
        "nll": {cond: float(v.mean()) for cond, v in nll.items()},
        "per_sample": {**{f"vig_{c}": v.tolist() for c, v in per_sample.items()},
                       **{f"nll_{c}": v.tolist() for c, v in nll.items()}},
        "negative_tokens": most_negative_tokens(samples, k=top_k),
        "negative_token_strings": negative_token_strings(samples, k=top_k),
    }


def _token_texts(sample: SampleConditions) -> list[str]:
    answers = [a.strip() for a in sample.answers]
    return [answers[t][s:e] if t < len(answers) else "" for t, s, e in
            zip(sample.token_turn, sample.token_char_start, sample.token_char_end)]


def most_negative_tokens(samples: list[SampleConditions], *, k: int) -> list[dict]:
    """The ``k`` answer tokens with the lowest VIG (real image vs counterfactual), with their sample and turn."""
    rows = []
    for s in samples:
        vig = s.vig("real")
        for i, text in enumerate(_token_texts(s)):
            rows.append({"sample_id": s.sample_id, "turn": int(s.token_turn[i]), "token": text, "vig": float(vig[i])})
    return sorted(rows, key=lambda r: r["vig"])[:k]


def negative_token_strings(samples: list[SampleConditions], *, k: int) -> list[dict]:
    """Token strings by mean VIG, most negative first: a template token that the image makes less likely
    everywhere (a format artifact) has a low mean over many occurrences."""
    by_text: dict[str, list[float]] = {}
    for s in samples:
        for text, value in zip(_token_texts(s), s.vig("real")):
            by_text.setdefault(text, []).append(float(value))
    rows = [{"token": t, "count": len(v), "mean_vig": float(np.mean(v))} for t, v in by_text.items()]
    return sorted(rows, key=lambda r: (r["mean_vig"], -r["count"]))[:k]


def decide(summary: dict, thresholds: CheckThresholds) -> list[str]:
    """The failed criteria, each a sentence with its number (empty = the scorer passes)."""
    t, s = thresholds, summary
    if s["n"] == 0:
        return ["no sample could be scored under every condition"]
    failures = []
    if s["identical_share"] > t.max_identical_share:
        failures.append(f"the counterfactual equals the real image for the model in {_pct(s['identical_share'])} "
                        "of samples (every token VIG is 0): it removes nothing")
    if not s["vig_matching"] > t.min_matching_vig:
        failures.append(f"mean VIG with the real image {_f(s['vig_matching'])} is not above "
                        f"{t.min_matching_vig:+.3f}: the image does not help the model predict the answers")
    if not s["ordering_holds"]:
        failures.append("VIG does not order matching > partly matching > mismatched image")
    if not s["mismatch_drop_share"] >= t.min_mismatch_drop_share:
        failures.append(f"only {_pct(s['mismatch_drop_share'])} of answers are less likely with another "
                        "sample's image: the model barely reads the image")
    retained = s["retained_none"]
    if not math.isfinite(retained):
        failures.append("the real image is no better than no image on average, so the counterfactual cannot be judged")
    elif retained > t.max_retained:
        failures.append(f"the counterfactual keeps {_pct(retained)} of the image's gain over no image: "
                        "it leaves what the answers need in the image")
    return failures


def check_scorer(scorer, records: list[dict], *, thresholds: CheckThresholds = CheckThresholds(),
                 top_k: int = 15) -> CheckResult:
    """Score ``records`` under every condition, summarise and decide. ``records``: LLaVA records with images.

    >>> result = check_scorer(VIGScorer.from_pretrained(path), sample_records("data.jsonl", n=64))  # doctest: +SKIP
    >>> print(result.verdict())  # doctest: +SKIP
    """
    if len(scorer.counterfactuals) > 1:
        raise ValueError(f"vig check checks one counterfactual, not {scorer.counterfactuals}: check each with "
                         "counterfactual=<name>")
    samples, skipped = score_conditions(scorer, records)
    summary = summarise(samples, top_k=top_k)
    return CheckResult(scorer_id=scorer.scorer_id, counterfactual=scorer.options.counterfactual, samples=samples,
                       skipped=skipped, summary=summary, thresholds=thresholds, failures=decide(summary, thresholds))


# ----------------------------------------------------------------------------------------------------
# input


def one_image(record: dict):
    """A record's image: LLaVA's ``image`` or, failing that, ``images``; a list of one stands for its element, a
    longer list is returned as it is (the check skips such records: :data:`MULTI_IMAGE`)."""
    image = record.get("image") if record.get("image") is not None else record.get("images")
    return image[0] if isinstance(image, list) and len(image) == 1 else image


def _has_image(record: dict) -> bool:
    image = one_image(record)
    return image is not None and not (isinstance(image, (str, list)) and not image)


def _stream_records(path: str, storage):
    """The records of a JSONL file or of a one-array JSON file, one at a time (ijson streams the array)."""
    import io

    with io.BufferedReader(storage.open(path), 1 << 20) as f:
        if path.endswith(".jsonl"):
            for line in f:
                if line.strip():
                    yield json.loads(line)
        else:
            import ijson

            yield from ijson.items(f, "item", use_float=True)


def sample_records(path: str, *, n: int, seed: int = 0, storage=None) -> list[dict]:
    """Up to ``n`` records with an image from a LLaVA JSONL or one-array JSON file (a local path or a URI read
    through ``storage``), drawn uniformly with ``seed``.

    The file is streamed (reservoir sampling), so memory is bounded by ``n`` whatever the file's size.
    """
    from vig_udf.storage import Storage, canonical

    path = canonical(path)
    if not path.endswith((".json", ".jsonl")):
        raise ValueError(f"{path}: sample_records reads .json (one array) or .jsonl; sample Parquet with "
                         "vig_udf.spark.check_job.sample_input (Spark)")
    rng = np.random.default_rng(seed)
    reservoir: list[dict] = []
    seen = 0
    for record in _stream_records(path, storage or Storage()):
        if not isinstance(record, dict) or not _has_image(record):
            continue
        seen += 1
        if len(reservoir) < n:
            reservoir.append(record)
        else:
            j = int(rng.integers(seen))
            if j < n:
                reservoir[j] = record
    return reservoir
