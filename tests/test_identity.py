"""The scorer identity hashes what changes scores, in one place, from one declaration of the options."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from vig_udf.config import ScorerConfig, load_config
from vig_udf.scoring.identity import model_fingerprint, scorer_identity
from vig_udf.scoring.options import ScorerOptions

SHA_A, SHA_B = "a" * 40, "b" * 40


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIG_DIGEST_CACHE", str(tmp_path / "digests.json"))


def _fake_checkpoint(folder, weight: bytes):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"max_pixels": 12845056}))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(weight)
    return str(folder)


def test_a_change_in_the_middle_of_the_weights_changes_the_fingerprint(tmp_path):
    """A LoRA merge saved to the same path: same size, same first and last MiB, other middle."""
    weight = bytearray(os.urandom(3 << 20))
    path = _fake_checkpoint(tmp_path / "m", bytes(weight))
    first = model_fingerprint(path)
    weight[len(weight) // 2] ^= 0xFF
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(weight))
    assert model_fingerprint(path) != first


def test_the_processor_configuration_is_part_of_the_fingerprint(tmp_path):
    """A smaller Qwen2-VL pixel budget changes VIG: it must change the id."""
    path = _fake_checkpoint(tmp_path / "m", b"weights")
    first = model_fingerprint(path)
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps({"max_pixels": 200704}))
    assert model_fingerprint(path) != first
    (tmp_path / "m" / "README.md").write_text("notes")  # not something that changes scores
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps({"max_pixels": 12845056}))
    assert model_fingerprint(path) == first


def test_weight_digests_are_cached_by_path_size_and_mtime(tmp_path, monkeypatch):
    path = _fake_checkpoint(tmp_path / "m", b"x" * 1000)
    reads = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: reads.append(f.name) or real(f, name))
    first = model_fingerprint(path)
    assert model_fingerprint(path) == first and len(reads) == 1  # second call: from the cache
    weight = tmp_path / "m" / "model.safetensors"
    weight.write_bytes(b"y" * 1000)
    stat = weight.stat()
    os.utime(weight, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert model_fingerprint(path) != first and len(reads) == 2


def test_a_hub_model_is_identified_by_its_resolved_commit(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--org--vlm"
    for sha in (SHA_A, SHA_B):
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA_A)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    at_a = model_fingerprint("org/vlm")
    assert at_a == {"model": "org/vlm", "commit": SHA_A}
    (repo / "refs" / "main").write_text(SHA_B)  # main moved on: same id and revision, other weights
    assert model_fingerprint("org/vlm") == {"model": "org/vlm", "commit": SHA_B}
    assert model_fingerprint("org/vlm", SHA_A) == at_a  # a commit as revision is the commit
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="cannot resolve the commit"):
        model_fingerprint("org/not-cached")


def test_identity_covers_placement_and_counterfactual_parameters_not_throughput():
    fingerprint = {"model": "m", "files": {"model.safetensors": "0" * 64}}

    def ident(**options):
        return scorer_identity(fingerprint, ScorerOptions(**options).for_device("cpu"), chat_template="T")

    base = ident()
    assert ident(image_placement="inline") != base
    assert ident(blur_sigma=0.1) != base
    assert ident(counterfactual="drop") != base
    assert ident(counterfactual="drop", blur_sigma=0.1) == ident(counterfactual="drop")  # blur only
    assert ident(max_image_pixels=1000) != base and ident(dtype="bfloat16") != base
    assert scorer_identity(fingerprint, ScorerOptions().for_device("cpu"), chat_template="U") != base
    assert ident(batch_tokens=64, prep_workers=0, prep_chunk=3, stack_passes=False, attn_implementation="eager",
                 device="cpu", image_root="/x") == base


def test_one_declaration_of_the_scorer_options():
    """The config takes every option the Python API takes, with the same defaults; nothing else."""
    assert set(ScorerConfig.model_fields) == set(ScorerOptions.model_fields) | {"model_path"}
    cfg = load_config(ScorerConfig, None, ["model_path=m", "revision=v1.0", "chat_template='{{ x }}'",
                                           "attn_implementation=eager", "image_placement=inline"])
    assert cfg.options() == ScorerOptions(revision="v1.0", chat_template="{{ x }}", attn_implementation="eager",
                                          image_placement="inline")
    assert ScorerOptions().trust_remote_code is False
    with pytest.raises(TypeError, match="unknown scorer options"):
        ScorerOptions.from_kwargs(blur=3)
    with pytest.raises(ValueError, match="image_placement"):
        load_config(ScorerConfig, None, ["image_placement=last"])


def test_the_driver_and_the_scorer_compute_the_same_id(tiny_checkpoints, tmp_path):
    """resolve_spec (driver, no weights loaded) and VIGScorer.scorer_id (after loading) agree, overrides included."""
    from vig_udf.scoring.identity import library_versions
    from vig_udf.scoring.scorer import VIGScorer
    from vig_udf.spark.score_job import ScoreJobConfig, resolve_spec

    template = "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{{ c.get('text', '<image>') }}" \
               "{% endfor %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    options = {"image_placement": "inline", "chat_template": template, "counterfactual": "noise"}
    spec = resolve_spec(ScoreJobConfig(scorer={"model_path": tiny_checkpoints["llava"], **options}), gpu=False)
    scorer = VIGScorer.from_pretrained(spec.model_path, **spec.kwargs)
    assert scorer.scorer_id == spec.scorer_id
    assert spec.kwargs["batch_tokens"] is None and spec.kwargs["dtype"] == "float32"  # batch size: the executor's
    assert spec.record["chat_template"] == template and spec.record["image_placement"] == "inline"
    assert spec.record["library_versions"] == library_versions() and "torch" in spec.record["library_versions"]
    default = resolve_spec(ScoreJobConfig(scorer={"model_path": tiny_checkpoints["llava"]}), gpu=False)
    assert default.scorer_id != spec.scorer_id and default.record["image_placement"] == "first"


def test_a_model_path_that_is_neither_a_folder_nor_a_hub_id_is_named():
    with pytest.raises(ValueError, match="neither a local checkpoint folder nor a hub model id"):
        model_fingerprint("/no/such/checkpoint")


# -- the driver's fingerprint checked on an executor ---------------------------------------------------------

def _safetensors_checkpoint(folder, *, names=("a", "b")):
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (folder / "tokenizer.json").write_text("{}")
    save_file({name: torch.arange(256, dtype=torch.float32) + i for i, name in enumerate(names)},
              str(folder / "model.safetensors"))
    return str(folder)


@pytest.fixture
def weight_hashes(monkeypatch):
    """The weight files hashed in full (SHA-256 of the whole file), by name, as they are hashed."""
    hashed = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: hashed.append(os.path.basename(f.name)) or real(f, name))
    return hashed


def _driver(path):
    from vig_udf.scoring.identity import weight_stamps

    stamps = weight_stamps(path)
    return model_fingerprint(path), stamps


def _fresh_executor_cache(tmp_path, monkeypatch, name="executor"):
    monkeypatch.setenv("VIG_DIGEST_CACHE", str(tmp_path / f"{name}-digests.json"))  # another node: nothing cached


def test_an_unchanged_checkpoint_is_verified_without_hashing_its_weights(tmp_path, monkeypatch, weight_hashes):
    from vig_udf.scoring.identity import verified_fingerprint

    path = _safetensors_checkpoint(tmp_path / "m")
    fingerprint, stamps = _driver(path)
    assert weight_hashes == ["model.safetensors"]  # the driver hashes once
    assert set(stamps) == {"model.safetensors"} and stamps["model.safetensors"]["header"]
    _fresh_executor_cache(tmp_path, monkeypatch)
    assert verified_fingerprint(path, fingerprint, stamps) == fingerprint
    assert verified_fingerprint(path, fingerprint, stamps) == fingerprint
    assert weight_hashes == ["model.safetensors"]  # the executors: no weight hashed again


def test_a_weight_file_changed_on_the_executor_is_refused(tmp_path, monkeypatch, weight_hashes):
    """Same size and header, other values (a fine-tune saved over it): the new time makes it hashed, and refused."""
    from vig_udf.scoring.identity import ModelMismatchError, verified_fingerprint

    path = _safetensors_checkpoint(tmp_path / "m")
    fingerprint, stamps = _driver(path)
    weight = tmp_path / "m" / "model.safetensors"
    data = bytearray(weight.read_bytes())
    data[-1] ^= 0xFF
    weight.write_bytes(bytes(data))
    stat = weight.stat()
    os.utime(weight, ns=(stat.st_atime_ns, stamps["model.safetensors"]["mtime_ns"] + 10**9))
    _fresh_executor_cache(tmp_path, monkeypatch)
    weight_hashes.clear()
    with pytest.raises(ModelMismatchError, match=r"on this executor differs .*model\.safetensors: other content"):
        verified_fingerprint(path, fingerprint, stamps)
    assert weight_hashes == ["model.safetensors"]


def test_a_changed_header_or_size_is_refused_without_reading_the_weights(tmp_path, monkeypatch, weight_hashes):
    from vig_udf.scoring.identity import ModelMismatchError, verified_fingerprint

    path = _safetensors_checkpoint(tmp_path / "m")
    fingerprint, stamps = _driver(path)
    weight = tmp_path / "m" / "model.safetensors"
    mtime = stamps["model.safetensors"]["mtime_ns"]
    _safetensors_checkpoint(tmp_path / "m", names=("a", "c"))  # a renamed tensor: same size, other header
    os.utime(weight, ns=(mtime, mtime))  # even with the driver's time
    assert weight.stat().st_size == stamps["model.safetensors"]["size"]
    weight_hashes.clear()
    with pytest.raises(ModelMismatchError, match="other safetensors header"):
        verified_fingerprint(path, fingerprint, stamps)
    weight.write_bytes(weight.read_bytes() + b"\0")
    with pytest.raises(ModelMismatchError, match="bytes here"):
        verified_fingerprint(path, fingerprint, stamps)
    assert weight_hashes == []


def test_a_copy_with_other_times_is_hashed_once_and_accepted(tmp_path, monkeypatch, weight_hashes):
    """A node that got the files without their times (a plain copy) verifies them in full, once per node."""
    import shutil

    from vig_udf.scoring.identity import verified_fingerprint

    driver_path = _safetensors_checkpoint(tmp_path / "driver" / "m")
    fingerprint, stamps = _driver(driver_path)
    executor_path = tmp_path / "executor" / "m"
    executor_path.mkdir(parents=True)
    for file in (tmp_path / "driver" / "m").iterdir():
        shutil.copyfile(file, executor_path / file.name)
        os.utime(executor_path / file.name, ns=(1, 10**18))
    _fresh_executor_cache(tmp_path, monkeypatch)
    weight_hashes.clear()
    assert verified_fingerprint(str(executor_path), fingerprint, stamps) == fingerprint
    assert verified_fingerprint(str(executor_path), fingerprint, stamps) == fingerprint  # cached on this node
    assert weight_hashes == ["model.safetensors"]


def test_missing_extra_and_changed_configuration_files_are_refused(tmp_path):
    from vig_udf.scoring.identity import ModelMismatchError, verified_fingerprint

    path = _safetensors_checkpoint(tmp_path / "m")
    fingerprint, stamps = _driver(path)
    (tmp_path / "m" / "tokenizer.json").unlink()
    (tmp_path / "m" / "chat_template.jinja").write_text("{{ messages }}")
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "llava", "vocab_size": 2}))
    with pytest.raises(ModelMismatchError) as err:
        verified_fingerprint(path, fingerprint, stamps)
    message = str(err.value)
    assert "tokenizer.json: missing here" in message and "chat_template.jinja: not in the driver's" in message
    assert "config.json: other content" in message
    with pytest.raises(ModelMismatchError, match="has no such folder"):
        verified_fingerprint(str(tmp_path / "elsewhere"), fingerprint, stamps)


def test_a_hub_model_is_verified_by_its_commit_alone():
    from vig_udf.scoring.identity import verified_fingerprint, weight_stamps

    fingerprint = {"model": "org/vlm", "commit": SHA_A}
    assert weight_stamps("org/vlm") is None
    assert verified_fingerprint("org/vlm", fingerprint, None) is fingerprint
