"""The scorer identity: a stable hash of everything that changes scores, computed here and only here.

Computed without loading the model, so the Spark driver makes it once and ships it to the executors
(which recompute it after loading and refuse a mismatch). What it hashes:

- A local checkpoint folder: every configuration, processor and tokenizer file at its top level (the
  model config, ``preprocessor_config.json`` with the pixel budget, tokenizer files, chat templates,
  remote code) byte for byte, and the full content of every weight file. Weights are hashed whole
  (SHA-256 of each file), not as a safetensors header plus per-tensor digests: a per-tensor digest has to
  read every byte too, and a whole-file digest also covers ``.bin`` and ``.gguf`` files and any change of
  the header. The digest is cached by path, size and modification time, so a folder is read once per
  machine; a LoRA merge saved to the same path changes the mtime and is hashed again.
- A hub model: the repository id and the resolved commit. A hub commit pins every file, weights included
  (content addressed), so the commit is the identity whether the files are downloaded yet or not. The
  commit comes from the revision when it is one, else from the local hub cache's ref, else from the hub.
  The scorer then loads exactly that commit.
- The scorer options marked ``identity`` in :class:`~vig_udf.scoring.options.ScorerOptions` (counterfactual and
  its parameters, image placement, prompt format (a conversation format by its whole definition), image
  padding, max_length, dtype, max_image_pixels), resolved for the checkpoint (``for_checkpoint``), and the
  chat template actually used (the processor's or the override).

Library versions are not hashed (they change scores by float tolerance only); :func:`library_versions`
records them beside the rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tempfile
from pathlib import Path

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_CONFIG_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")
_NOT_SCORING = {"generation_config.json", "README.md", "LICENSE.txt"}  # cannot change a teacher-forced score
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def digest_cache_path() -> Path:
    """Where weight digests are cached (``VIG_DIGEST_CACHE``, else ``~/.cache/vig-spark/weight-digests.json``)."""
    return Path(os.environ.get("VIG_DIGEST_CACHE") or Path.home() / ".cache" / "vig-spark" / "weight-digests.json")


def file_digest(path: Path) -> str:
    """SHA-256 of the file's full content, cached by (real path, size, mtime)."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    cache_file = digest_cache_path()
    cache = _read_cache(cache_file)
    if key in cache:
        return cache[key]
    with open(real, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    cache = _read_cache(cache_file)  # another process may have added entries meanwhile
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{real}:")}
    cache[key] = digest
    _write_cache(cache_file, cache)
    return digest


def model_fingerprint(model_path: str, revision: str | None = None) -> dict:
    """What identifies the model at ``model_path`` (a local folder or a hub id); see the module docstring."""
    path = Path(model_path)
    if path.is_dir():
        return {"model": os.path.basename(os.path.normpath(model_path)), "files": folder_digests(path)}
    return {"model": str(model_path), "commit": resolve_hub_commit(str(model_path), revision)}


def folder_digests(path: Path) -> dict[str, str]:
    """File name -> SHA-256 of the checkpoint's configuration, processor, tokenizer and weight files."""
    digests = {}
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        if file.name in _NOT_SCORING:
            continue
        if file.suffix in _WEIGHT_SUFFIXES:
            digests[file.name] = file_digest(file)
        elif file.suffix in _CONFIG_SUFFIXES:
            digests[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    if not any(name.endswith(_WEIGHT_SUFFIXES) for name in digests):
        raise ValueError(f"{path} holds no weight file ({', '.join(_WEIGHT_SUFFIXES)}): not a checkpoint folder")
    return digests


def resolve_hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit that ``revision`` (None = main) of hub model ``repo_id`` names."""
    if revision and _COMMIT.match(revision):
        return revision
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except HFValidationError as exc:
        raise ValueError(f"model {repo_id!r} is neither a local checkpoint folder nor a hub model id "
                         f"(org/name): {exc}") from exc
    if isinstance(cached, str):  # .../snapshots/<commit>/config.json
        return Path(cached).parent.name
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(repo_id, revision=revision).sha
    except Exception as exc:
        raise ValueError(f"cannot resolve the commit of hub model {repo_id!r} (revision {revision or 'main'}): it "
                         f"is not in the local hub cache and the hub did not answer ({type(exc).__name__}: {exc}); "
                         "give a local checkpoint folder, download it first, or pass revision=<commit>") from exc


def identity_record(fingerprint: dict, options, *, chat_template: str | None) -> dict:
    """The unhashed identity: model fingerprint, identity options and the chat template used.

    ``options``: a :class:`~vig_udf.scoring.options.ScorerOptions` with device defaults filled in (``for_device``).
    """
    return {**fingerprint, **options.identity_options(),
            "chat_template": hashlib.sha256(str(chat_template).encode()).hexdigest()}


def scorer_identity(fingerprint: dict, options, *, chat_template: str | None) -> str:
    """16-hex-digit id of a scorer (:func:`identity_record` hashed)."""
    record = identity_record(fingerprint, options, chat_template=chat_template)
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """The versions of the libraries that compute scores (recorded, not hashed)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for package in ("vig-spark", "torch", "transformers", "tokenizers", "pillow", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, cache: dict) -> None:
    """Write atomically (temp file + rename): concurrent writers lose an entry at worst, never the file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".digests-")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, path)
    except OSError:  # a read-only home: the digest is just not cached
        pass
