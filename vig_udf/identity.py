"""The scorer identity: a stable hash of everything that changes scores.

Computed without loading weights, so the Spark driver can make it once and ship it to the executors.
A local checkpoint is fingerprinted by its config and the size, head and tail bytes of every weight
file (a retrained model at the same path gets a new identity); a hub model by id, revision and commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
_EDGE_BYTES = 1 << 20


def model_fingerprint(model_path: str, revision: str | None = None) -> dict:
    """What identifies the weights at ``model_path`` (a local folder or a hub id)."""
    path = Path(model_path)
    if not path.is_dir():
        return {"model": str(model_path), "revision": revision}
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    for weight in sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
        size = weight.stat().st_size
        digest.update(f"{weight.name}:{size}".encode())
        with weight.open("rb") as f:
            digest.update(f.read(_EDGE_BYTES))
            f.seek(max(0, size - _EDGE_BYTES))
            digest.update(f.read(_EDGE_BYTES))
    return {"model": os.path.basename(os.path.normpath(model_path)), "weights": digest.hexdigest()}


def scorer_identity(fingerprint: dict, *, counterfactual: str, blur_sigma: float, chat_template: str | None,
                    max_length: int | None, dtype: str) -> str:
    """16-hex-digit id of a scorer. Batch size and device are left out: they must not change scores."""
    identity = {
        **fingerprint,
        "counterfactual": counterfactual,
        "blur_sigma": blur_sigma if counterfactual == "blur" else None,
        "chat_template": hashlib.sha256(str(chat_template).encode()).hexdigest(),
        "max_length": max_length,
        "dtype": str(dtype).removeprefix("torch."),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
