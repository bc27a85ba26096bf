"""Image loading and counterfactual images.

Counterfactuals (the image that carries (almost) no visual information):

- ``blur``: Gaussian blur of the same image, the paper's choice. ``blur_sigma`` is the standard deviation
  as a fraction of the image's shorter side, so the same setting removes the same amount of detail
  whatever the resolution (0.05 on a 336 px image is a sigma of about 17 px). A blur keeps large uniform
  colour regions and the overall layout: too small a sigma leaves colours readable.
- ``blank``: a uniform image of the image's mean colour, same size.
- ``noise``: Gaussian pixel noise around mid-grey (std 64), same size, seeded by the sample id so that
  a rescore gives the same numbers.
- ``drop``: no image at all; the image tokens leave the prompt (handled by the scorer, not here).
- ``mismatched``: another sample's image (its partner, :mod:`vig_udf.scoring.partners`), so that the prompt
  keeps an image and VIG measures what this image shows rather than that there is one (handled by the
  scorer: the record carries its partner's image).

A record with several images (one ``<image>`` placeholder each; :func:`image_refs`) gets every image replaced:
blur, blank and noise make each image's own counterfactual (noise seeded by the sample id and the image's
position), ``drop`` removes them all, ``mismatched`` puts the partner's (first) image in every slot.

Blur, blank and noise keep the image size, so the processor produces the same token layout for both
passes and they can run as one stacked batch.

Padding (``image_pad=square``, LLaVA-1.5's ``image_aspect_ratio=pad``): :func:`pad_to_square` is LLaVA's
``expand2square``, the image centred on a square of the processor's mean colour (:func:`processor_fill`),
so that the processor's resize keeps the whole image where its centre crop would cut the long side. It is
applied before the counterfactual is made, so blur, blank and noise are computed on the padded image and
both passes keep one layout.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps, ImageStat

from vig_udf.scoring.status import IMAGE_UNREADABLE, IMAGE_UNSUPPORTED, SampleError
from vig_udf.storage import canonical, local_path, scheme_of, split_uri

COUNTERFACTUALS = ("blur", "drop", "blank", "noise", "mismatched")
IMAGE_PADS = ("none", "square")
SAME_LAYOUT_COUNTERFACTUALS = ("blur", "blank", "noise")
DEFAULT_BLUR_SIGMA = 0.05


def image_refs(value: Any) -> list:
    """A record's ``image`` value as the list of its images: ``[]`` for none (None, ``""``, an empty list), the
    list itself for a list of refs (one per ``<image>`` placeholder, in order), else ``[value]``. A ref is a
    path or URI, raw bytes or a PIL image."""
    if value is None or (isinstance(value, str) and not value):
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def record_images(record: dict) -> list:
    """A record's images (:func:`image_refs`): LLaVA's ``image`` or, failing that, ``images`` (the key of
    LLaVA-OneVision and Mantis records)."""
    return image_refs(record.get("image") if record.get("image") is not None else record.get("images"))


def load_image(image: Any, *, image_root: str | None = None, max_pixels: int | None = None,
               storage=None, exif_transpose: bool = False) -> Image.Image:
    """Open ``image`` (a path or URI, raw bytes or a PIL image) as a fully decoded RGB image, turned as its EXIF
    orientation says when ``exif_transpose``.

    High-range pixels are scaled to 8 bits (:func:`_eight_bit`): 16-bit grey, 32-bit integers within 16 bits,
    32-bit floats within 0..1; other ranges are refused (``image_unsupported``) rather than clipped to black
    or white.

    A path on object storage (``s3a://...``, or relative to an ``image_root`` there) is read through
    ``storage`` (a :class:`vig_udf.storage.Storage`; default: the cloud SDKs' own credentials).
    Raises :class:`SampleError` with status ``image_unreadable`` and the cause when the file is missing,
    truncated, corrupt, not an image, or larger than ``max_pixels``.
    """
    if isinstance(image, Image.Image):
        return _decoded_rgb(image, "the given PIL image", max_pixels, exif_transpose)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decoded_rgb(_open(io.BytesIO(bytes(image)), "image bytes"), "image bytes", max_pixels, exif_transpose)
    if isinstance(image, (str, os.PathLike)):
        path = resolve_image(os.fspath(image), image_root)
        if local_path(path) is None:
            return _decoded_rgb(_open(io.BytesIO(_read_remote(path, storage)), path), path, max_pixels,
                                exif_transpose)
        check_image_file(path)
        return _decoded_rgb(_open(path, path), path, max_pixels, exif_transpose)
    raise SampleError(IMAGE_UNREADABLE, f"unsupported image value of type {type(image).__name__}")


def resolve_image(image_path: str, image_root: str | None) -> str:
    """The file that ``image_path`` names: under ``image_root`` when one is given, else as given.

    With an image root, the path (relative to it, or absolute) must stay inside it, also after following
    symlinks: a symlink inside the root that points inside it is fine; ``../``, an absolute path elsewhere
    or a symlink that leaves the root raise :class:`SampleError` (``image_unreadable``) saying which.
    Ingest, the score job and the scorer all check paths here, so they refuse the same paths alike. A root
    on object storage (``s3a://bucket/images``) confines keys the same way, by their normalised path (object
    stores have no symlinks).
    """
    if image_root is None:
        return os.path.abspath(image_path) if scheme_of(image_path) is None else canonical(image_path)
    root_path = local_path(image_root)
    if root_path is None:
        return _resolve_under_uri(image_path, image_root)
    root, real_root = root_path, os.path.realpath(root_path)
    named = os.path.normpath(os.path.join(root, image_path))
    if not any(_inside(named, r) for r in (root, real_root)):
        raise SampleError(IMAGE_UNREADABLE, f"image path {image_path!r} points outside the image root {image_root}")
    full = os.path.realpath(named)
    if not _inside(full, real_root):
        raise SampleError(IMAGE_UNREADABLE, f"image path {image_path!r} is a symlink that leaves the image root "
                                            f"{image_root} (it resolves to {full})")
    return full


def _resolve_under_uri(image_path: str, image_root: str) -> str:
    base, root = split_uri(image_root)
    if scheme_of(image_path) is not None:
        other_base, named = split_uri(image_path)
        if other_base != base:
            raise SampleError(IMAGE_UNREADABLE, f"image path {image_path!r} points outside the image root {image_root}")
    else:
        named = posixpath.join(root, image_path)
    named = posixpath.normpath(named)
    if not (named == root or named.startswith(root.rstrip("/") + "/")):
        raise SampleError(IMAGE_UNREADABLE, f"image path {image_path!r} points outside the image root {image_root}")
    return base + named


def _read_remote(uri: str, storage) -> bytes:
    from vig_udf.storage import Storage

    try:
        return (storage or Storage()).read_bytes(uri)
    except FileNotFoundError:
        raise SampleError(IMAGE_UNREADABLE, f"image file not found: {uri}") from None
    except OSError as exc:
        raise SampleError(IMAGE_UNREADABLE, f"cannot read {uri}: {exc}") from exc


def check_image_file(path: str, storage=None) -> None:
    """Raise ``image_unreadable`` unless ``path`` (a local path or a URI) is an existing file (a folder is named
    as one)."""
    if local_path(path) is None:
        from vig_udf.storage import Storage

        try:
            found = (storage or Storage()).info(path)
        except OSError as exc:
            raise SampleError(IMAGE_UNREADABLE, f"cannot reach {path}: {exc}") from exc
        if found is None:
            raise SampleError(IMAGE_UNREADABLE, f"image file not found: {path}")
        if found.is_dir:
            raise SampleError(IMAGE_UNREADABLE, f"image path {path} is a folder, not an image file")
        return
    if os.path.isdir(path):
        raise SampleError(IMAGE_UNREADABLE, f"image path {path} is a folder, not an image file")
    if not os.path.isfile(path):
        raise SampleError(IMAGE_UNREADABLE, f"image file not found: {path}")


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _open(source, name: str) -> Image.Image:
    try:
        return Image.open(source)
    except Exception as exc:  # PIL raises several unrelated types for bad files
        raise SampleError(IMAGE_UNREADABLE, f"cannot open {name} as an image: {exc}") from exc


def _decoded_rgb(img: Image.Image, name: str, max_pixels: int | None, exif_transpose: bool = False) -> Image.Image:
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise SampleError(
            IMAGE_UNREADABLE, f"{name} is {width}x{height}, above the max_pixels limit of {max_pixels}"
        )
    try:
        img.load()  # decode now: a truncated file fails here, not inside the processor
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        eight_bit = _eight_bit(img, name)
        return eight_bit.convert("RGB")
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(IMAGE_UNREADABLE, f"cannot decode {name}: {exc}") from exc


def _eight_bit(img: Image.Image, name: str = "the image") -> Image.Image:
    """High-range grey scaled to 8 bits, not clipped: 16-bit (PIL modes ``I;16*``, and ``I`` as 16-bit PNGs open,
    with values within 0..65535) divided by 257, 32-bit float (``F``) within 0..1 times 255.

    PIL's own ``convert`` clips those values at 255 (a 16-bit image comes out almost white, a 0..1 float one
    black). An ``I`` image beyond 16 bits, a float image outside 0..1 or with NaN / infinity is refused
    (``image_unsupported``): its scale is not known. 16-bit RGB and grey+alpha PNGs are already opened as 8-bit
    RGB / RGBA by PIL.
    """
    if not (img.mode.startswith("I;16") or img.mode in ("I", "F")):
        return img
    pixels = np.asarray(img, dtype=np.float64)
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if img.mode == "F":
        if not (np.isfinite(pixels).all() and low >= 0.0 and high <= 1.0):
            raise SampleError(IMAGE_UNSUPPORTED, f"{name} is a 32-bit float image with values in [{low:g}, "
                                                 f"{high:g}]; only float images within 0..1 are scaled to 8 bits")
        scaled = pixels * 255.0
    else:
        if low < 0 or high > 65535:
            raise SampleError(IMAGE_UNSUPPORTED, f"{name} is a 32-bit integer image with values in [{low:g}, "
                                                 f"{high:g}]; only values within 0..65535 (16 bits) are scaled")
        scaled = pixels / 257.0
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")


def make_counterfactual(
    image: Image.Image, kind: str, *, blur_sigma: float = DEFAULT_BLUR_SIGMA, seed_key: str = ""
) -> Image.Image:
    """The counterfactual of ``image`` for ``kind`` in blur/blank/noise (same size, RGB)."""
    if kind == "blur":
        sigma = blur_sigma * min(image.size)
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))
    if kind == "blank":
        mean = tuple(int(round(c)) for c in ImageStat.Stat(image).mean[:3])
        return Image.new("RGB", image.size, mean)
    if kind == "noise":
        seed = int.from_bytes(hashlib.sha256(seed_key.encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        pixels = rng.normal(128.0, 64.0, size=(image.size[1], image.size[0], 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    raise ValueError(f"no counterfactual image for {kind!r}; choose one of {SAME_LAYOUT_COUNTERFACTUALS}")


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """``image`` centred on a square canvas of colour ``fill`` (LLaVA's ``expand2square``: the offset of the
    short side is ``(long - short) // 2``); a square image is returned as it is."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def processor_fill(processor) -> tuple[int, int, int]:
    """The padding colour of ``processor``: its image processor's ``image_mean`` in 0-255, truncated as LLaVA's
    ``tuple(int(x * 255) for x in image_mean)`` (CLIP's mean gives (122, 116, 104))."""
    image_processor = getattr(processor, "image_processor", None)
    mean = getattr(image_processor, "image_mean", None)
    if mean is None:
        raise ValueError(f"image_pad=square pads with the image processor's image_mean, and "
                         f"{type(processor).__name__} has none; use image_pad=none")
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(x) for x in mean]
    return tuple(int(x * 255) for x in mean[:3])
