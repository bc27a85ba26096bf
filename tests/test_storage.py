"""The storage layer: one spelling per location, Spark's view of it, and the same file operations on a local
folder and on a bucket of the local S3 server (reached over HTTP with Spark's own s3a settings)."""

from __future__ import annotations

import os
import pickle

import pytest

from tests.s3_server import create_bucket, s3a_conf
from vig_udf.scoring.images import load_image, resolve_image
from vig_udf.scoring.status import SampleError
from vig_udf.storage import (Storage, StorageError, cached_copy, canonical, local_path, model_folder, spark_path,
                             split_uri)


def test_each_location_has_one_spelling_and_spark_gets_local_paths_qualified(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert canonical("lake/") == str(tmp_path / "lake")
    assert canonical("file:///data/x") == canonical("file:/data/x") == canonical("file://localhost/data/x") == "/data/x"
    assert canonical("/dbfs/vig/runs") == "dbfs:/vig/runs"
    assert canonical("s3a://bucket/lake/") == "s3a://bucket/lake"
    with pytest.raises(StorageError, match="names the host 'other'"):
        canonical("file://other/data")
    # a cluster whose default file system is HDFS still reads the local path that every node mounts
    assert spark_path("/data/lake") == "file:/data/lake"
    assert spark_path("s3a://bucket/lake") == "s3a://bucket/lake" and spark_path("dbfs:/x") == "dbfs:/x"
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    assert spark_path("/Volumes/main/vig/lake") == "/Volumes/main/vig/lake"
    assert split_uri("s3a://bucket/a/b") == ("s3a://bucket", "/a/b")


def test_dbfs_paths_need_the_mount_and_hub_ids_stay_model_paths(tmp_path):
    if os.path.isdir("/dbfs"):
        pytest.skip("this machine has a /dbfs mount")
    with pytest.raises(StorageError, match="/dbfs mount"):
        local_path("dbfs:/vig/lake")
    assert model_folder("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"  # a hub id, not a folder
    assert model_folder(str(tmp_path)) == str(tmp_path)


def test_storage_reads_sparks_s3a_settings_and_pickles():
    storage = Storage.from_conf({**s3a_conf("http://127.0.0.1:9"), "spark.sql.shuffle.partitions": "4",
                                 "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "k"})
    assert storage.s3 == {"access_key": "testing", "endpoint": "http://127.0.0.1:9", "path_style": "true",
                          "provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider", "region": "us-east-1",
                          "secret_key": "testing", "ssl": "false"}
    assert storage.azure_keys == {"acct": "k"}
    assert pickle.loads(pickle.dumps(storage)) == storage


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A folder on each kind of file system, with the Storage that reaches it."""
    if request.param == "local":
        return Storage(), str(tmp_path / "root")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = f"storage-{os.getpid()}-{abs(hash(str(tmp_path))) % 10**8}"
    create_bucket(endpoint, bucket)
    return Storage.from_conf(s3a_conf(endpoint)), f"s3a://{bucket}/root"


def test_the_same_operations_on_a_folder_and_on_a_bucket(root, tmp_path):
    storage, base = root
    assert storage.info(base) is None and storage.list(base) == [] and storage.files(base) == []
    storage.write_text(f"{base}/a/one.txt", "one")
    storage.write_bytes(f"{base}/a/b/two.bin", b"\x00\x01")
    storage.write_text(f"{base}/top.txt", "top")
    assert storage.read_text(f"{base}/a/one.txt") == "one"
    assert storage.is_dir(f"{base}/a") and storage.is_file(f"{base}/top.txt") and not storage.is_file(f"{base}/a")
    assert [(e.name, e.is_dir) for e in storage.list(base)] == [("a", True), ("top.txt", False)]
    files = storage.files(base)
    assert [e.uri for e in files] == [f"{base}/a/b/two.bin", f"{base}/a/one.txt", f"{base}/top.txt"]
    assert [e.size for e in files] == [2, 3, 3] and all(e.mtime_ns for e in files)
    with storage.open(f"{base}/a/b/two.bin") as f:
        f.seek(1)
        assert f.read() == b"\x01"
    with pytest.raises(FileNotFoundError, match="no file at"):
        storage.read_bytes(f"{base}/missing")

    # a write that fails part-way leaves nothing behind, and an existing file as it was
    with pytest.raises(RuntimeError):
        with storage.write(f"{base}/top.txt") as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        with storage.write(f"{base}/new.txt") as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert storage.read_text(f"{base}/top.txt") == "top"
    assert not storage.exists(f"{base}/new.txt")
    assert [e.name for e in storage.list(base)] == ["a", "top.txt"]  # no temporary file left

    copied = storage.download(f"{base}/a", str(tmp_path / "copy"))
    assert sorted(os.path.relpath(p, tmp_path / "copy") for p in copied) == ["b/two.bin", "one.txt"]
    storage.upload(str(tmp_path / "copy"), f"{base}/again")
    assert storage.read_bytes(f"{base}/again/b/two.bin") == b"\x00\x01"
    assert storage.delete(f"{base}/a") and not storage.exists(f"{base}/a") and not storage.delete(f"{base}/a")


def test_a_failed_local_write_keeps_the_old_file(tmp_path):
    storage = Storage()
    target = tmp_path / "file.txt"
    storage.write_text(str(target), "old")
    with pytest.raises(RuntimeError):
        with storage.write(str(target)) as f:
            f.write(b"new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["file.txt"]


def test_images_and_models_on_a_bucket(s3_endpoint, tmp_path, monkeypatch):
    from tests.conftest import random_image

    create_bucket(s3_endpoint, "images-and-models")
    storage = Storage.from_conf(s3a_conf(s3_endpoint))
    random_image(40, 30, 0).save(tmp_path / "img.png")
    storage.write_bytes("s3a://images-and-models/images/coco/img.png", (tmp_path / "img.png").read_bytes())

    # an image root on object storage confines keys as a folder confines paths
    root = "s3a://images-and-models/images"
    assert resolve_image("coco/img.png", root) == f"{root}/coco/img.png"
    for outside in ("../secret.png", "/etc/passwd", "s3a://other-bucket/images/x.png", "coco/../../x.png"):
        with pytest.raises(SampleError, match="outside the image root"):
            resolve_image(outside, root)
    image = load_image("coco/img.png", image_root=root, storage=storage)
    assert image.size == (40, 30) and image.mode == "RGB"
    with pytest.raises(SampleError, match="image file not found"):
        load_image("coco/missing.png", image_root=root, storage=storage)

    # a checkpoint folder in the bucket is copied once into this machine's cache and reused
    monkeypatch.setenv("VIG_CACHE_DIR", str(tmp_path / "cache"))
    storage.write_text("s3a://images-and-models/model/config.json", "{}")
    first = cached_copy("s3a://images-and-models/model", storage, kind="models")
    assert sorted(os.listdir(first)) == [".vig-copy.json", "config.json"]
    marker_time = os.path.getmtime(os.path.join(first, ".vig-copy.json"))
    assert cached_copy("s3a://images-and-models/model", storage, kind="models") == first
    assert os.path.getmtime(os.path.join(first, ".vig-copy.json")) == marker_time  # not copied again
    storage.write_text("s3a://images-and-models/model/config.json", '{"changed": 1}')
    assert open(os.path.join(cached_copy("s3a://images-and-models/model", storage, kind="models"),
                             "config.json")).read() == '{"changed": 1}'
