"""The scorer identity: a stable hash of everything that changes scores, computed here and only here.

Computed without loading the model, so the Spark driver makes it once and ships it to the executors
with the weight files' stamps (:func:`weight_stamps`: size, modification time, the SHA-256 of a
safetensors file's header). An executor checks its files against them (:func:`verified_fingerprint`)
instead of hashing the weights again, and refuses a mismatch (:class:`ModelMismatchError`). What it hashes:

- A local checkpoint folder: every configuration, processor and tokenizer file at its top level (the
  model config, ``preprocessor_config.json`` with the pixel budget, tokenizer files, chat templates,
  remote code) byte for byte, and the full content of every weight file. Weights are hashed whole
  (SHA-256 of each file), not as a safetensors header plus per-tensor digests: a per-tensor digest has to
  read every byte too, and a whole-file digest also covers ``.bin`` and ``.gguf`` files and any change of
  the header. The digest is cached by path, size and modification time, so a folder is read once per
  machine where it is hashed (the driver; an executor only for a file whose time differs from the
  driver's); a LoRA merge saved to the same path changes the mtime and is hashed again.
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
_MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors format's own limit on the JSON header


class ModelMismatchError(RuntimeError):
    """The checkpoint this process sees differs from the one the driver fingerprinted."""


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
    for file in _identity_files(path):
        if file.suffix in _WEIGHT_SUFFIXES:
            digests[file.name] = file_digest(file)
        else:
            digests[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    if not any(name.endswith(_WEIGHT_SUFFIXES) for name in digests):
        raise ValueError(f"{path} holds no weight file ({', '.join(_WEIGHT_SUFFIXES)}): not a checkpoint folder")
    return digests


def _identity_files(path: Path) -> list[Path]:
    """The checkpoint's files that the identity covers (configuration, processor, tokenizer, weights)."""
    return [file for file in sorted(p for p in path.iterdir() if p.is_file())
            if file.name not in _NOT_SCORING and file.suffix in _WEIGHT_SUFFIXES + _CONFIG_SUFFIXES]


def weight_stamps(model_path: str) -> dict[str, dict] | None:
    """File name -> ``{"size", "mtime_ns", "header"}`` of each weight file of a local checkpoint (``header``:
    SHA-256 of a safetensors file's header, None for other formats); None for a hub model.

    Read without reading the weights (a stat and at most the header), on the driver next to
    :func:`model_fingerprint`, so that executors can check their files cheaply (:func:`verified_fingerprint`).
    """
    path = Path(model_path)
    if not path.is_dir():
        return None
    return {file.name: _stamp(file) for file in _identity_files(path) if file.suffix in _WEIGHT_SUFFIXES}


def _stamp(file: Path) -> dict:
    stat = os.stat(os.path.realpath(file))
    header = safetensors_header_digest(file) if file.suffix == ".safetensors" else None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "header": header}


def safetensors_header_digest(path: Path) -> str:
    """SHA-256 of a safetensors file's header (its 8-byte length and the JSON of every tensor's name, dtype,
    shape and offsets); a file too short or with an impossible length gets the digest of what it holds."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        prefix = f.read(8)
        digest.update(prefix)
        if len(prefix) == 8:
            length = int.from_bytes(prefix, "little")
            if length <= _MAX_SAFETENSORS_HEADER:
                digest.update(f.read(length))
    return digest.hexdigest()


def verified_fingerprint(model_path: str, fingerprint: dict, stamps: dict[str, dict] | None) -> dict:
    """The driver's ``fingerprint`` of ``model_path``, once this process's copy of the checkpoint is checked
    against it; raises :class:`ModelMismatchError` naming each file that differs.

    A hub model (a commit, no files) is returned as it is: the commit pins every file. For a local folder:
    the set of files must be the driver's; configuration, processor and tokenizer files (small) are hashed
    in full; a weight file must have the driver's size and safetensors header, and when its modification
    time is also the driver's it is accepted without reading its data. A weight file with another
    modification time (a copy made without keeping times, a file rewritten in place) is hashed in full
    (:func:`file_digest`, cached) and must have the driver's digest. As with make or rsync, a file rewritten
    with the same size, header and modification time is not seen.
    """
    expected = fingerprint.get("files")
    if expected is None:
        return fingerprint
    path = Path(model_path)
    if not path.is_dir():
        raise ModelMismatchError(f"{model_path}: the driver fingerprinted a checkpoint folder there, this executor "
                                 "has no such folder (the model must be at the same path on every node)")
    present = {file.name: file for file in _identity_files(path)}
    problems = [f"{name}: missing here" for name in sorted(set(expected) - set(present))]
    problems += [f"{name}: not in the driver's checkpoint" for name in sorted(set(present) - set(expected))]
    for name in sorted(set(expected) & set(present)):
        problem = _file_problem(present[name], expected[name], (stamps or {}).get(name))
        if problem:
            problems.append(f"{name}: {problem}")
    if problems:
        raise ModelMismatchError(f"the checkpoint at {model_path} on this executor differs from the one the driver "
                                 f"fingerprinted ({'; '.join(problems)}): give every node the same files")
    return fingerprint


def _file_problem(file: Path, digest: str, stamp: dict | None) -> str | None:
    """What differs between ``file`` and the driver's ``digest`` and ``stamp``; None when it is the same file."""
    if file.suffix not in _WEIGHT_SUFFIXES:
        return None if hashlib.sha256(file.read_bytes()).hexdigest() == digest else "other content"
    if stamp is None:  # no stamp shipped: the full digest decides
        return None if file_digest(file) == digest else "other content (SHA-256)"
    here = _stamp(file)
    if here["size"] != stamp["size"]:
        return f"{here['size']} bytes here, {stamp['size']} on the driver"
    if here["header"] != stamp["header"]:
        return "other safetensors header (tensor names, dtypes or shapes)"
    if here["mtime_ns"] == stamp["mtime_ns"]:
        return None
    return None if file_digest(file) == digest else "other content (SHA-256) with the same size and header"


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
