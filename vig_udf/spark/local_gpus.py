"""GPUs that Spark does not schedule (local mode): at most one scoring task per GPU, each on its own GPU.

Spark's local mode does not assign GPUs to tasks (``spark.task.resource.gpu.*`` needs a cluster manager),
and ``local[*]`` runs a task per core, so each Python worker would load the model once per core. For a
local master on a machine with GPUs, the score job's session runs at most one task per GPU
(:func:`local_master`), and a Python worker that Spark gave no GPU takes one of its own for its life
(:func:`worker_gpu`): the first GPU whose lock file it can lock (``flock``; the OS releases it when the
worker exits), so concurrent workers use different GPUs.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile

_held: dict[str, tuple[int, int]] = {}  # lock folder -> (GPU index, open lock file) of this process


def local_master(master: str | None, gpus: int) -> str | None:
    """``local[<gpus>]`` for a local master that would run more concurrent tasks than ``gpus``; else as given."""
    if not gpus or not master:
        return master
    match = re.fullmatch(r"local\[(\*|\d+)(,\s*\d+)?\]|local", master.strip())
    if match is None:
        return master
    slots = match.group(1) or "1"
    if slots != "*" and int(slots) <= gpus:
        return master
    return f"local[{gpus}{match.group(2) or ''}]"  # the task retries (local[N,F]) kept


def worker_gpu(gpus: int, lock_dir: str | None = None) -> int | None:
    """The GPU index this process holds (taken on first call: the first one no other process holds); None
    when every GPU is taken by other processes or there is none."""
    if gpus <= 0:
        return None
    folder = lock_dir or os.path.join(tempfile.gettempdir(), f"vig-gpus-{os.getuid()}")
    if folder in _held:
        return _held[folder][0]
    os.makedirs(folder, exist_ok=True)
    for index in range(gpus):
        fd = os.open(os.path.join(folder, f"gpu-{index}.lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _held[folder] = (index, fd)  # kept open: the lock lasts as long as this worker
        return index
    return None
