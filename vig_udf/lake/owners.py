"""Who is writing to the lake: a job's lease (``<lake>/_staging/_jobs/<id>.json``) while it runs, and the owner
marker beside each staging folder (``<folder>.owner.json``), both holding the writer's host, pid, job and start.

A lease or marker is *live* when its process is alive on this host, or when it was written on another host
(which this one cannot look at) less than ``stale_hours`` ago. ``vig lake restore`` is refused while a live
lease is there; staging folders whose owner is not live are removed by the next job (and ``vig lake
vacuum``) once they are older than the retention.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from contextlib import contextmanager

from vig_udf.lake.paths import STAGING, table_uri
from vig_udf.storage import Storage, join

JOBS = "_jobs"  # <lake>/_staging/_jobs: one lease file per running job
OWNER_SUFFIX = ".owner.json"


def owner_record(job: str) -> dict:
    """This process as the owner of a lease or staging folder."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": job, "started": time.time()}


def is_live(owner: dict | None, *, stale_hours: float) -> bool:
    """Whether ``owner``'s process may still be running (see the module docstring)."""
    if not owner:
        return False
    if owner.get("host") == socket.gethostname():
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, TypeError, ValueError):
            return True  # another user's process, or a marker that does not say: assume it runs
        return True
    return time.time() - float(owner.get("started") or 0) < stale_hours * 3600


def _read(storage: Storage, uri: str) -> dict | None:
    try:
        data = json.loads(storage.read_text(uri))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def job_lease(storage: Storage, lake, job: str):
    """Mark the lake as written by this job while the block runs (removed at its end, whatever happens)."""
    uri = join(table_uri(lake), STAGING, JOBS, f"{uuid.uuid4().hex}.json")
    storage.write_text(uri, json.dumps(owner_record(job)))
    try:
        yield uri
    finally:
        try:
            storage.delete(uri)
        except OSError:
            pass  # a lease left behind is not live once its process is gone


def live_jobs(storage: Storage, lake, *, stale_hours: float = 24.0, besides: str | None = None) -> list[dict]:
    """The leases of the jobs writing to ``lake`` now (``besides``: a lease URI of this process to leave out)."""
    folder = join(table_uri(lake), STAGING, JOBS)
    leases = []
    for entry in storage.list(folder) if storage.is_dir(folder) else []:
        if entry.is_dir or entry.uri == besides or not entry.name.endswith(".json"):
            continue
        owner = _read(storage, entry.uri)
        if is_live(owner, stale_hours=stale_hours):
            leases.append(owner)
    return leases


def claim(storage: Storage, folder: str, job: str) -> None:
    """Write the owner marker of the staging ``folder`` (before anything is staged there)."""
    storage.write_text(folder.rstrip("/") + OWNER_SUFFIX, json.dumps(owner_record(job)))


def owner_of(storage: Storage, folder: str) -> dict | None:
    """The owner marker of the staging ``folder``, or None."""
    return _read(storage, folder.rstrip("/") + OWNER_SUFFIX)


def release(storage: Storage, folder: str) -> None:
    """Delete the owner marker of ``folder`` (the folder itself is deleted by its owner)."""
    marker = folder.rstrip("/") + OWNER_SUFFIX
    if storage.exists(marker):
        storage.delete(marker)
