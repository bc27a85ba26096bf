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

Blur, blank and noise keep the image size, so the processor produces the same token layout for both
passes and they can run as one stacked batch.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageStat

from vig_udf.status import IMAGE_UNREADABLE, SampleError

COUNTERFACTUALS = ("blur", "drop", "blank", "noise")
SAME_LAYOUT_COUNTERFACTUALS = ("blur", "blank", "noise")
DEFAULT_BLUR_SIGMA = 0.05


def load_image(image: Any, *, image_root: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open ``image`` (a path, raw bytes or a PIL image) as a fully decoded RGB image.

    Raises :class:`SampleError` with status ``image_unreadable`` and the cause when the file is missing,
    truncated, corrupt, not an image, or larger than ``max_pixels``.
    """
    if isinstance(image, Image.Image):
        return _decoded_rgb(image, "the given PIL image", max_pixels)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decoded_rgb(_open(io.BytesIO(bytes(image)), "image bytes"), "image bytes", max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = os.path.join(image_root, image) if image_root and not os.path.isabs(image) else os.fspath(image)
        if not os.path.isfile(path):
            raise SampleError(IMAGE_UNREADABLE, f"image file not found: {path}")
        return _decoded_rgb(_open(path, path), path, max_pixels)
    raise SampleError(IMAGE_UNREADABLE, f"unsupported image value of type {type(image).__name__}")


def _open(source, name: str) -> Image.Image:
    try:
        return Image.open(source)
    except Exception as exc:  # PIL raises several unrelated types for bad files
        raise SampleError(IMAGE_UNREADABLE, f"cannot open {name} as an image: {exc}") from exc


def _decoded_rgb(img: Image.Image, name: str, max_pixels: int | None) -> Image.Image:
    width, height = img.size
    if max_pixels is not None and width * height > max_pixels:
        raise SampleError(
            IMAGE_UNREADABLE, f"{name} is {width}x{height}, above the max_pixels limit of {max_pixels}"
        )
    try:
        img.load()  # decode now: a truncated file fails here, not inside the processor
        return img.convert("RGB")
    except Exception as exc:
        raise SampleError(IMAGE_UNREADABLE, f"cannot decode {name}: {exc}") from exc


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
