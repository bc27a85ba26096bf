"""One storage layer: every path the product takes is a URI, opened from Python through ``pyarrow.fs``.

Spark reads and writes a URI with its own (Hadoop) file systems; Python code on the driver, in a Spark task
or on a training rank opens the same URI through a :class:`Storage`, which maps it onto a ``pyarrow.fs``
file system:

================================================  ===============================================
URI                                               opened as
================================================  ===============================================
``/data/x``, ``file:/data/x``, ``data/x``         the local file system (relative: the working folder)
``s3a://bucket/key`` (``s3://``, ``s3n://``)      S3 (``pyarrow.fs.S3FileSystem``)
``gs://bucket/key``                               Google Cloud Storage
``abfss://container@account.dfs.core.windows.net/path``  Azure Data Lake Storage Gen2
``hdfs://namenode/path``                          HDFS (needs libhdfs and the Hadoop CLASSPATH)
``dbfs:/path``                                    the ``/dbfs/path`` mount (Databricks)
``/Volumes/catalog/schema/volume/path``           a POSIX path (Unity Catalog volumes are mounted)
================================================  ===============================================

Credentials and endpoints are Spark's own settings, so one config serves both sides: a Storage made from a
session (:func:`session_storage`) or a config's ``spark.conf`` reads Hadoop's ``fs.s3a.*`` keys (access
key, secret, session token, endpoint, region, path-style access, SSL) and ``fs.azure.account.key.*``; what
they leave out comes from the cloud SDKs' usual chains (``AWS_*`` variables, ``~/.aws``, instance
profiles). A Storage is small and picklable: the driver ships it to Spark tasks and training ranks.

Writes: :meth:`Storage.write` makes a file appear whole, replacing any file of that name only when the
write succeeds. On a local or mounted file system it writes a temporary file beside the target and renames
it; on an object store it uploads a temporary object beside the target and copies it into place (one
server-side copy; an object larger than the store copies in one request, 5 GB on S3, is streamed into place
instead), and a write that fails part-way deletes what it wrote.

Example::

    storage = Storage.from_conf({"spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000"})
    with storage.open("s3a://bucket/corpus/records.jsonl") as f:
        first = f.readline()
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator, Mapping

from vig_udf.errors import StorageError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
S3_SCHEMES = ("s3a", "s3", "s3n")
DBFS_MOUNT = "/dbfs"
# Hadoop's s3a settings (under ``spark.hadoop.``) that a Python S3 client needs too
S3A_KEYS = {"access.key": "access_key", "secret.key": "secret_key", "session.token": "session_token",
            "endpoint": "endpoint", "endpoint.region": "region", "region": "region",
            "connection.ssl.enabled": "ssl", "path.style.access": "path_style",
            "aws.credentials.provider": "provider"}
_AZURE_KEY = re.compile(r"^(?:spark\.hadoop\.)?fs\.azure\.account\.key\.([^.]+)\.dfs\.core\.windows\.net$")


def scheme_of(uri: str) -> str | None:
    """The URI's scheme in lower case (``s3a``, ``file``, ``dbfs``), or None for a plain path."""
    match = _SCHEME.match(uri)
    if match is None or re.match(r"^[A-Za-z]:[\\/]", uri):  # a Windows drive is not a scheme
        return None
    return match.group(1).lower()


def on_databricks() -> bool:
    """Whether this process runs on a Databricks runtime."""
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


def canonical(uri) -> str:
    """The one spelling of a location that the product stores, compares and prints.

    A plain or ``file:`` path becomes absolute (no scheme, no trailing slash); ``/dbfs/x`` becomes ``dbfs:/x``
    (the same place, as Spark names it); any other URI is kept as written, less a trailing slash.
    """
    text = os.fspath(uri)
    scheme = scheme_of(text)
    if scheme == "file":
        text = _file_path(text)
    elif scheme is None:
        text = os.path.abspath(text)
        if text == DBFS_MOUNT or text.startswith(DBFS_MOUNT + "/"):
            text = "dbfs:" + (text[len(DBFS_MOUNT):] or "/")
    return text.rstrip("/") or "/"


def spark_path(uri) -> str:
    """``uri`` as Spark should be given it: local paths qualified as ``file:`` (so that a cluster whose default
    file system is HDFS still reads the local path every node mounts), except for Databricks' ``/Volumes`` and
    ``/Workspace`` paths on Databricks, which its Spark resolves itself."""
    text = canonical(uri)
    if scheme_of(text) is not None:
        return text
    if on_databricks() and text.startswith(("/Volumes/", "/Workspace/")):
        return text
    return "file:" + text


def join(uri: str, *parts: str) -> str:
    """``uri`` with path segments appended (``/``-separated on every file system)."""
    text = uri.rstrip("/")
    for part in parts:
        text = f"{text}/{part.strip('/')}"
    return text


def local_path(uri) -> str | None:
    """The POSIX path of ``uri`` when it has one (a plain or ``file:`` path; ``dbfs:/x`` through the ``/dbfs``
    mount, which must exist); None for object stores and other remote file systems."""
    text = canonical(uri)
    scheme = scheme_of(text)
    if scheme is None:
        return text
    if scheme == "dbfs":
        if not os.path.isdir(DBFS_MOUNT):
            raise StorageError(f"{text}: dbfs:/ paths are read from Python through the {DBFS_MOUNT} mount, which "
                               "this machine does not have (it exists on Databricks clusters)")
        return DBFS_MOUNT + "/" + text[len("dbfs:"):].lstrip("/")
    return None


def split_uri(uri: str) -> tuple[str, str]:
    """``(scheme://authority, /path)`` of a URI with an authority (``s3a://bucket/a/b`` -> ``s3a://bucket``,
    ``/a/b``)."""
    scheme, _, rest = canonical(uri).partition("://")
    authority, _, path = rest.partition("/")
    return f"{scheme}://{authority}", "/" + path


@dataclass(frozen=True)
class Entry:
    """A file or folder found by :meth:`Storage.list`/:meth:`Storage.files`: its URI, name, kind, size and
    modification time (nanoseconds since the epoch; None where the store keeps none, as for S3 folders)."""

    uri: str
    name: str
    is_dir: bool
    size: int | None
    mtime_ns: int | None


@dataclass(frozen=True)
class Storage:
    """How to reach the file systems of URIs from Python; see the module docstring. Build it with
    :meth:`from_conf` (Spark settings) or :func:`session_storage` (a running session)."""

    s3: Mapping[str, str] = field(default_factory=dict)
    azure_keys: Mapping[str, str] = field(default_factory=dict)  # storage account -> account key

    @classmethod
    def from_conf(cls, conf: Mapping[str, str] | None) -> "Storage":
        """The storage settings found among Spark settings (``spark.hadoop.fs.s3a.*``, ``fs.azure.account.key.*``;
        also without the ``spark.hadoop.`` prefix)."""
        s3, azure = {}, {}
        for key, value in (conf or {}).items():
            bare = key.removeprefix("spark.hadoop.")
            if bare.startswith("fs.s3a.") and bare[len("fs.s3a."):] in S3A_KEYS:
                s3[S3A_KEYS[bare[len("fs.s3a."):]]] = str(value)
            match = _AZURE_KEY.match(key)
            if match:
                azure[match.group(1)] = str(value)
        return cls(s3=dict(sorted(s3.items())), azure_keys=dict(sorted(azure.items())))

    # -- locating ---------------------------------------------------------------------------------------
    def filesystem(self, uri) -> tuple:
        """``(pyarrow file system, path on it)`` for ``uri``."""
        from pyarrow import fs as pafs

        local = local_path(uri)
        if local is not None:
            return pafs.LocalFileSystem(), local
        text = canonical(uri)
        scheme = scheme_of(text)
        rest = text.split("://", 1)[1] if "://" in text else text.split(":", 1)[1].lstrip("/")
        if scheme in S3_SCHEMES:
            return _s3(tuple(sorted(self.s3.items()))), rest
        if scheme in ("gs", "gcs"):
            return _gcs(), rest
        if scheme in ("abfs", "abfss"):
            container, _, location = rest.partition("@")
            account, _, path = location.partition("/")
            account_name = account.split(".", 1)[0]
            return _azure(account_name, self.azure_keys.get(account_name)), f"{container}/{path}".rstrip("/")
        if scheme in ("hdfs", "viewfs"):
            host = rest.split("/", 1)[0]
            return _hdfs(f"{scheme}://{host}"), "/" + (rest.split("/", 1)[1] if "/" in rest else "")
        raise StorageError(f"{text}: Python cannot open {scheme}:// paths here; use a local or mounted path, "
                           "s3a://, gs://, abfss://, hdfs://, dbfs:/ or a /Volumes path")

    # -- reading ----------------------------------------------------------------------------------------
    def info(self, uri) -> Entry | None:
        """The file or folder at ``uri``, or None when there is none."""
        from pyarrow import fs as pafs

        fs, path = self.filesystem(uri)
        found = fs.get_file_info(path)
        if found.type == pafs.FileType.NotFound:
            return None
        return _entry(canonical(uri), found)

    def exists(self, uri) -> bool:
        """Whether a file or folder is at ``uri``."""
        return self.info(uri) is not None

    def is_dir(self, uri) -> bool:
        """Whether ``uri`` is a folder (on an object store: a prefix with objects under it)."""
        found = self.info(uri)
        return found is not None and found.is_dir

    def is_file(self, uri) -> bool:
        """Whether ``uri`` is a file (an object)."""
        found = self.info(uri)
        return found is not None and not found.is_dir

    def list(self, uri) -> list[Entry]:
        """The files and folders directly under the folder ``uri``, sorted by name (none if it does not exist)."""
        return self._select(uri, recursive=False)

    def files(self, uri) -> list[Entry]:
        """Every file under the folder ``uri`` (recursively), or the file itself; sorted by URI."""
        found = self.info(uri)
        if found is None:
            return []
        if not found.is_dir:
            return [found]
        return [e for e in self._select(uri, recursive=True) if not e.is_dir]

    def _select(self, uri, *, recursive: bool) -> list[Entry]:
        from pyarrow import fs as pafs

        fs, path = self.filesystem(uri)
        base = canonical(uri)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
        entries = [_entry(join(base, posixpath.relpath(i.path, path)), i) for i in infos]
        return sorted(entries, key=lambda e: e.uri)

    def open(self, uri):
        """``uri`` opened for reading, as a seekable binary file (a context manager)."""
        fs, path = self.filesystem(uri)
        try:
            return fs.open_input_file(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no file at {canonical(uri)}") from None

    def read_bytes(self, uri) -> bytes:
        """The whole content of the file at ``uri``."""
        with self.open(uri) as f:
            return f.read()

    def read_text(self, uri) -> str:
        """The file at ``uri`` as UTF-8 text."""
        return self.read_bytes(uri).decode("utf-8")

    # -- writing ----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self, uri) -> Iterator:
        """A binary stream whose content becomes the file ``uri`` when the block ends without an error (see
        the module docstring); the folders above it are created."""
        local = local_path(uri)
        if local is not None:
            folder = os.path.dirname(local) or "."
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(local)}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    yield f
                os.chmod(tmp, 0o666 & ~_umask())
                os.replace(tmp, local)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        fs, path = self.filesystem(uri)
        folder, name = posixpath.split(path)
        temporary = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
        stream = fs.open_output_stream(temporary)
        try:
            yield stream
        except BaseException:
            stream.close()  # an object-store upload cannot be abandoned: complete it, then delete it
            _quietly(fs.delete_file, temporary)
            raise
        stream.close()
        try:
            try:
                fs.move(temporary, path)  # a server-side copy: the object appears whole, replacing the old one
            except OSError:  # a copy larger than the store copies in one request (S3: 5 GB): stream it
                with fs.open_input_stream(temporary) as src, fs.open_output_stream(path) as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
        finally:
            _quietly(fs.delete_file, temporary)

    def write_bytes(self, uri, data: bytes) -> None:
        """Write ``data`` as the file ``uri`` (whole or not at all)."""
        with self.write(uri) as f:
            f.write(data)

    def write_text(self, uri, text: str) -> None:
        """Write ``text`` (UTF-8) as the file ``uri``."""
        self.write_bytes(uri, text.encode("utf-8"))

    def makedirs(self, uri) -> None:
        """Create the folder ``uri`` and its parents (object stores need none: a no-op there)."""
        local = local_path(uri)
        if local is not None:
            os.makedirs(local, exist_ok=True)

    def delete(self, uri) -> bool:
        """Delete the file or folder (recursively) at ``uri``; returns whether something was there."""
        found = self.info(uri)
        if found is None:
            return False
        fs, path = self.filesystem(uri)
        if found.is_dir:
            fs.delete_dir(path)
        else:
            fs.delete_file(path)
        return True

    def download(self, uri, local_folder: str) -> list[str]:
        """Copy the file or the folder tree at ``uri`` into ``local_folder``; returns the local files."""
        base, copied = canonical(uri), []
        for entry in self.files(uri):
            relative = posixpath.relpath(entry.uri, base) if entry.uri != base else posixpath.basename(base)
            target = os.path.join(local_folder, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with self.open(entry.uri) as src, open(target + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
            os.replace(target + ".part", target)
            copied.append(target)
        return copied

    def upload(self, local_folder: str, uri) -> list[str]:
        """Copy the local folder tree ``local_folder`` to ``uri`` (each file whole); returns the URIs written."""
        written = []
        for folder, _, names in os.walk(local_folder):
            for name in sorted(names):
                path = os.path.join(folder, name)
                target = join(canonical(uri), *os.path.relpath(path, local_folder).split(os.sep))
                with open(path, "rb") as src, self.write(target) as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
                written.append(target)
        return written


def session_storage(spark) -> Storage:
    """The storage settings of a running Spark session (classic or Spark Connect): its s3a and Azure keys."""
    try:
        conf = dict(spark.conf.getAll)
    except Exception:  # noqa: BLE001 - a server that does not list its settings: only the SDKs' own chains
        conf = {}
    return Storage.from_conf(conf)


def _entry(uri: str, info) -> Entry:
    from pyarrow import fs as pafs

    is_dir = info.type == pafs.FileType.Directory
    return Entry(uri=uri, name=posixpath.basename(info.path.rstrip("/")), is_dir=is_dir,
                 size=None if is_dir else info.size, mtime_ns=info.mtime_ns)


def _file_path(uri: str) -> str:
    rest = uri[len("file:"):]
    if rest.startswith("//"):  # file://host/path: only an empty host or localhost is this machine
        host, _, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise StorageError(f"{uri}: a file: URI names the host {host!r}; only this machine's paths can be opened")
        rest = "/" + path
    return os.path.abspath(rest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _quietly(call, *args) -> None:
    try:
        call(*args)
    except OSError:
        pass


@lru_cache(maxsize=16)
def _s3(options: tuple):
    """A pyarrow S3 file system for Hadoop-style s3a options (one per process and option set)."""
    from pyarrow import fs as pafs

    opts = dict(options)
    kwargs: dict = {}
    for key in ("access_key", "secret_key", "session_token", "region"):
        if opts.get(key):
            kwargs[key] = opts[key]
    endpoint = opts.get("endpoint")
    if endpoint:
        scheme, _, host = endpoint.rpartition("://")
        kwargs["endpoint_override"] = host or endpoint
        kwargs["scheme"] = scheme or ("http" if opts.get("ssl", "true").lower() == "false" else "https")
    elif opts.get("ssl", "true").lower() == "false":
        kwargs["scheme"] = "http"
    if "Anonymous" in opts.get("provider", ""):
        kwargs["anonymous"] = True
    if opts.get("path_style", "").lower() == "false" and endpoint:
        kwargs["force_virtual_addressing"] = True
    return pafs.S3FileSystem(**kwargs)


@lru_cache(maxsize=1)
def _gcs():
    from pyarrow import fs as pafs

    return pafs.GcsFileSystem()


@lru_cache(maxsize=16)
def _azure(account: str, key: str | None):
    from pyarrow import fs as pafs

    return pafs.AzureFileSystem(account_name=account, account_key=key) if key else pafs.AzureFileSystem(account)


@lru_cache(maxsize=4)
def _hdfs(base: str):
    from pyarrow import fs as pafs

    return pafs.HadoopFileSystem.from_uri(base)


def cache_root() -> str:
    """This machine's cache folder for copies of remote files: ``$VIG_CACHE_DIR``, else ``~/.cache/vig-spark``."""
    return os.environ.get("VIG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vig-spark")


def cached_copy(uri: str, storage: Storage | None = None, *, kind: str = "files") -> str:
    """A local copy of the remote file or folder ``uri`` (a model checkpoint on object storage, say), made once
    per machine under :func:`cache_root` and reused while the remote listing (names, sizes, times) is the same.
    Processes on one machine copy it once between them (a file lock); a local ``uri`` is returned as it is."""
    import fcntl
    import hashlib
    import json

    local = local_path(uri)
    if local is not None:
        return local
    storage = storage or Storage()
    listing = [[e.uri, e.size, e.mtime_ns] for e in storage.files(uri)]
    if not listing:
        raise FileNotFoundError(f"nothing at {canonical(uri)} to copy")
    target = os.path.join(cache_root(), kind, hashlib.sha256(canonical(uri).encode()).hexdigest()[:20])
    marker = os.path.join(target, ".vig-copy.json")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if os.path.exists(marker) and json.loads(open(marker).read()) == listing:
            return target
        shutil.rmtree(target, ignore_errors=True)
        storage.download(uri, target)
        with open(marker, "w") as f:
            f.write(json.dumps(listing))
    return target


def model_folder(model_path: str, storage: Storage | None = None) -> str:
    """The folder to load a checkpoint from: a copy in this machine's cache for one on object storage or HDFS,
    the mounted path for ``dbfs:/``, else ``model_path`` as given (a local folder or a hub id)."""
    scheme = scheme_of(model_path)
    if scheme is None or scheme == "file":
        return model_path if scheme is None else local_path(model_path)
    return cached_copy(model_path, storage, kind="models")
