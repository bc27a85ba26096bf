"""Shared fixtures: tiny random-weight checkpoints of every family (built once per test session)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tests' models are tiny: a second intra-op thread buys nothing and, while Spark's JVM and workers share the
# two cores, its spin-waits made a training step of the demo model 7-9 times slower (BENCHMARKS.md, 2026-12-01).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# weight digests of the scorer identity are cached per run, not in the user's ~/.cache; the run removes them
if "VIG_DIGEST_CACHE" not in os.environ:
    _digests = tempfile.mkdtemp(prefix="vig-digests-")
    atexit.register(shutil.rmtree, _digests, ignore_errors=True)
    os.environ["VIG_DIGEST_CACHE"] = os.path.join(_digests, "digests.json")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA; on a CPU machine they are skipped (CPU tests cover the same logic)."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """family -> path of a saved tiny checkpoint (model + processor + chat template)."""
    from vig_udf.tiny import FAMILIES, build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_checkpoint(family, root / family, seed=1) for family in FAMILIES}


def random_image(width: int, height: int, seed: int) -> Image.Image:
    """A random RGB image with some structure (blocks), so that blurring changes it."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    pixels = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    pixels = np.pad(pixels, ((0, height - pixels.shape[0]), (0, width - pixels.shape[1]), (0, 0)))
    return Image.fromarray(pixels, "RGB")


def sample(sample_id: str, turns: list[tuple[str, str]], image=None, *, image_last: bool = False) -> dict:
    """A LLaVA record; ``turns`` are (question, answer) pairs, the placeholder in the first question."""
    conversations = []
    for i, (question, answer) in enumerate(turns):
        if i == 0 and image is not None:
            question = f"{question}\n<image>" if image_last else f"<image>\n{question}"
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    record = {"id": sample_id, "conversations": conversations}
    if image is not None:
        record["image"] = image
    return record


@pytest.fixture
def forward_batches(monkeypatch) -> list[int]:
    """The number of sequences in every forward batch the scorer runs (recorded, then run as usual)."""
    import vig_udf.scoring.scorer as scorer_module

    calls: list[int] = []
    real = scorer_module.answer_logprobs

    def spy(model, seqs, **kwargs):
        calls.append(len(seqs))
        return real(model, seqs, **kwargs)

    monkeypatch.setattr(scorer_module, "answer_logprobs", spy)
    return calls


@pytest.fixture(scope="session")
def mixed_samples() -> list[dict]:
    """Mixed lengths, image sizes, placeholder positions and turn counts, one text-only record."""
    return [
        sample("short", [("What colour is the square?", "Red")], random_image(64, 48, 0)),
        sample("multi", [("What colour is the circle?", "The circle is blue."),
                         ("How many circles are there?", "There are three circles."),
                         ("Is it on the left?", "Yes")], random_image(80, 60, 1)),
        sample("long", [("Describe the image in detail.",
                         "A small blue square sits above a large green triangle, and two red circles are on "
                         "the left side of the picture next to a yellow banana.")],
               random_image(50, 100, 2), image_last=True),
        sample("text", [("How do I reverse a list in Python?", "Use slicing: my_list[::-1].")]),
        sample("wide", [("What is on the right?", "A green triangle")], random_image(120, 40, 3)),
    ]


# Spark fixtures (one session per test session) live in their own module.
pytest_plugins = ["tests.spark_fixtures"]
