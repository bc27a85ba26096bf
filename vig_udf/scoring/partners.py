"""The partner rule of the ``mismatched`` counterfactual: which other sample's image stands in for a sample's own.

Declared here once; the score job computes the same rule with a DataFrame job (:mod:`vig_udf.spark.partners`),
``vig score-file`` and the tests with :func:`assign_partners`, and ``vig check`` uses its core
(:func:`next_different`) for its mismatched condition.

The rule, for the samples with an image of a corpus (or of a file):

1. Each sample gets a rank, :func:`rank_key` = ``sha256("<seed>:<sample_id>")`` (hex), so the order is a
   seeded permutation that depends on the sample ids and the seed only: a rerun, a retried task or another
   partitioning gives every sample the same partner.
2. Within each source (``scope=source``: the image path's first folder, so a GQA question gets a GQA
   image), the samples are ordered by rank; a sample's partner is the next one in that order whose image
   differs from its own (:func:`image_key`: the same path, or the same bytes, is the same image), wrapping
   around at the end (:func:`next_different`). Never the sample itself. An image is its content
   (:func:`content_key`): the same bytes under two paths, or stored once as bytes and once as a file, are one
   image, so a sample whose next candidate holds a copy of its picture moves on to the one after.
3. A source whose samples all show one image (or that has one sample) takes its partners from the whole
   corpus, ordered the same way; ``scope=corpus`` does that for every source.
4. A sample whose corpus holds no other image has no partner (status ``no_partner``); so has a text-only
   sample (it is ``text_only`` anyway).

Images are told apart by their bytes, not their pixels: two files of one picture encoded differently (a PNG
and its JPEG, other metadata) are two images to the rule, and the scorer, which compares the decoded pixels,
gives such a pair ``no_partner`` rather than a partner with the same pixels. A file that cannot be read is
keyed by its path (the scorer then reports the sample's or the partner's image error).

The rank depends on the corpus's sample ids only, so adding samples to the corpus can change the partner of a
sample scored before; each scores row records its partner (``counterfactual_partner``).
"""

from __future__ import annotations

import hashlib
from typing import Any

from vig_udf.corpus import source_of
from vig_udf.scoring.images import record_images

PARTNER_SCOPES = ("source", "corpus")


def rank_key(seed: int, sample_id: str) -> str:
    """The rank of ``sample_id`` in the partner order: ``sha256("<seed>:<sample_id>")`` as hex."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()


def next_different(keys: list) -> list[int]:
    """For each position of ``keys`` (image keys in partner order), the position of the next one whose key
    differs, wrapping around; -1 when every key is the same."""
    n = len(keys)
    return [next((j % n for j in range(i + 1, i + n) if keys[j % n] != keys[i]), -1) for i in range(n)]


def image_key(image: Any) -> str:
    """What makes two records' images the same for the partner rule: a path as it is written, bytes by their
    SHA-256, a decoded image by the SHA-256 of its pixels and size."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "sha256:" + hashlib.sha256(bytes(image)).hexdigest()
    if hasattr(image, "tobytes") and hasattr(image, "size"):
        return "pixels:" + hashlib.sha256(image.tobytes() + repr(image.size).encode()).hexdigest()
    return "path:" + str(image)


def file_key(path: str, *, image_root: str | None = None, storage=None) -> str:
    """:func:`image_key` of the bytes of the file ``path`` names (resolved under ``image_root`` as the scorer
    resolves it, read through ``storage`` when on object storage), so a file and the same bytes elsewhere share
    a key; ``path:<path>`` when it cannot be read. Reads the file in 1 MiB chunks."""
    from vig_udf.scoring.images import resolve_image
    from vig_udf.scoring.status import SampleError
    from vig_udf.storage import Storage, local_path

    digest = hashlib.sha256()
    try:
        full = resolve_image(path, image_root)
        where = local_path(full)
        with (open(where, "rb") if where is not None else (storage or Storage()).open(full)) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (SampleError, OSError, ValueError):
        return "path:" + str(path)
    return "sha256:" + digest.hexdigest()


def content_key(image: Any, *, image_root: str | None = None, storage=None) -> str:
    """The partner rule's key of a record's image: a path by its file's bytes (:func:`file_key`), any other
    form by :func:`image_key`."""
    if isinstance(image, str):
        return file_key(image, image_root=image_root, storage=storage)
    return image_key(image)


def image_source(image: Any) -> str:
    """The source of a record's image: the path's first folder (:func:`vig_udf.corpus.source_of`); an image
    given as bytes or pixels has none of its own (``embedded``, as ingest records it)."""
    return source_of(image) if isinstance(image, str) else "embedded"


def partners(ids: list[str], keys: list[str], sources: list[str], *, seed: int, scope: str) -> list[int]:
    """The partner position of each sample (-1: none) by the module's rule; ``ids``, ``keys`` (image keys) and
    ``sources`` are aligned, one entry per sample with an image."""
    if scope not in PARTNER_SCOPES:
        raise ValueError(f"partner_scope={scope!r}; choose one of {PARTNER_SCOPES}")
    ranked = sorted(range(len(ids)), key=lambda i: (rank_key(seed, ids[i]), ids[i]))
    whole = _partners_in(ranked, keys)
    if scope == "corpus":
        return whole
    out = list(whole)
    by_source: dict[str, list[int]] = {}
    for i in ranked:
        by_source.setdefault(sources[i], []).append(i)
    for members in by_source.values():
        within = _partners_in(members, keys)
        if any(within[i] >= 0 for i in members):  # more than one image in this source
            for i in members:
                out[i] = within[i]
    return out


def _partners_in(ordered: list[int], keys: list[str]) -> list[int]:
    """Partner positions (indices into ``keys``) of the samples ``ordered``, by :func:`next_different`."""
    following = next_different([keys[i] for i in ordered])
    result = [-1] * len(keys)
    for i, j in zip(ordered, following):
        result[i] = ordered[j] if j >= 0 else -1
    return result


def assign_partners(records: list[dict], *, seed: int = 0, scope: str = "source", image_root: str | None = None,
                    storage=None) -> list[dict]:
    """``records`` (LLaVA records) with the keys the scorer reads for ``counterfactual=mismatched``:
    ``counterfactual_partner`` (the partner's id) and ``counterfactual_image`` (its image), by the module's rule
    among these records; records without an image, or without a partner, are returned as they are. Image paths
    are keyed by their files' bytes (:func:`content_key`; ``image_root`` and ``storage`` as the scorer's).

    A record's id is its ``id`` (as the scorer names it, ``#<index>`` without one)."""
    with_image = [i for i, r in enumerate(records) if isinstance(r, dict) and record_images(r)]
    ids = [str(records[i]["id"]) if records[i].get("id") is not None else f"#{i}" for i in with_image]
    images = [record_images(records[i])[0] for i in with_image]  # a multi-image record: its first image
    keys = [content_key(im, image_root=image_root, storage=storage) for im in images]
    found = partners(ids, keys, [image_source(im) for im in images],
                     seed=seed, scope=scope)
    out = list(records)
    for i, p in zip(with_image, found):
        if p >= 0:
            out[i] = {**records[i], "counterfactual_partner": ids[p], "counterfactual_image": images[p]}
    return out

