"""Folders on the lake's file system (any Hadoop file system the session reaches: local, s3a, abfss, ...),
through the Spark session's own Hadoop configuration, so credentials and endpoints are Spark's."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _filesystem(spark, uri: str):
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:
        raise NotImplementedError("listing or deleting folders needs a classic Spark session (not Spark Connect)")
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark._jsparkSession.sessionState().newHadoopConf()), path


def list_folders(spark, uri: str) -> list[str]:
    """Names of the folders directly under ``uri`` (none if it does not exist), sorted."""
    fs, path = _filesystem(spark, uri)
    if not fs.exists(path):
        return []
    return sorted(status.getPath().getName() for status in fs.listStatus(path) if status.isDirectory())


def newest_modification_ms(spark, uri: str) -> int | None:
    """The newest modification time (ms since the epoch) of ``uri`` itself and of any file under it; None if
    it does not exist."""
    fs, path = _filesystem(spark, uri)
    if not fs.exists(path):
        return None
    files, newest = fs.listFiles(path, True), fs.getFileStatus(path).getModificationTime() or None
    while files.hasNext():
        mtime = files.next().getModificationTime()
        newest = mtime if newest is None else max(newest, mtime)
    return newest


def delete_folder(spark, uri: str) -> bool:
    """Delete ``uri`` and everything under it; returns whether anything was deleted. Never raises: a
    folder left behind is cleared by ``vig lake vacuum``."""
    try:
        fs, path = _filesystem(spark, uri)
        return bool(fs.delete(path, True))
    except Exception as error:  # noqa: BLE001 - clean-up must not mask the job's own outcome
        log.warning("could not delete %s (%s); `vig lake vacuum` clears it", uri, error)
        return False


def is_folder(spark, uri: str) -> bool:
    """Whether ``uri`` is an existing folder."""
    fs, path = _filesystem(spark, uri)
    return bool(fs.exists(path) and fs.getFileStatus(path).isDirectory())


def file_listing(spark, uri: str) -> list[tuple[str, int, int]]:
    """``(path, size, modification ms)`` of the file at ``uri``, or of every file under the folder, sorted."""
    fs, path = _filesystem(spark, uri)
    if not fs.getFileStatus(path).isDirectory():
        status = fs.getFileStatus(path)
        return [(str(status.getPath()), status.getLen(), status.getModificationTime())]
    files, listing = fs.listFiles(path, True), []
    while files.hasNext():
        status = files.next()
        listing.append((str(status.getPath()), status.getLen(), status.getModificationTime()))
    return sorted(listing)
