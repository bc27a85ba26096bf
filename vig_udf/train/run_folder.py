"""The output folder of a training run, local or on object storage: run record, checkpoints, final model.

The Trainer writes to a local folder. When the run's ``output_dir`` is local (or a mounted volume, ``/dbfs``,
``/Volumes``, NFS) that folder is the output itself. When it is a URI on object storage (``s3a://``,
``abfss://``, ``gs://``), each rank works in a local copy under :func:`vig_udf.storage.cache_root`, and the run
folder keeps the URI up to date: every checkpoint is uploaded as the Trainer writes it (each rank its own
files, then rank 0 marks it complete), old ones are pruned to ``keep_checkpoints``, a resume downloads the
newest complete one onto every rank's machine, and the final model is uploaded at the end. So the only
lasting copy is the URI; the local copies are caches.

Layout under the output (the same on both)::

    vig_run.json                   the run record (settings that change the weights, training set, processes)
    checkpoints/checkpoint-<step>/ the Trainer's checkpoint (+ vig_skipped_samples.json; remote: .vig-complete)
    model/ (adapter/ with LoRA)    the final model in Hugging Face layout
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from vig_udf.storage import Storage, cache_root, canonical, join, local_path

CHECKPOINTS = "checkpoints"
RUN_RECORD = "vig_run.json"
COMPLETE = ".vig-complete"  # written last into a remote checkpoint: every rank's files are there


class RunFolder:
    """One run's output folder (see the module docstring). Cheap to build on every rank."""

    def __init__(self, uri, storage: Storage | None = None):
        self.uri = canonical(uri)
        self.storage = storage or Storage()
        mounted = local_path(self.uri)
        self.remote = mounted is None
        self.local = Path(mounted) if mounted else Path(
            cache_root(), "runs", hashlib.sha256(self.uri.encode()).hexdigest()[:20])

    @property
    def checkpoints_dir(self) -> Path:
        """Where the Trainer writes its checkpoints on this machine."""
        return self.local / CHECKPOINTS

    def read_record(self) -> dict | None:
        """The run record written by an earlier run into this folder, or None."""
        uri = join(self.uri, RUN_RECORD)
        return json.loads(self.storage.read_text(uri)) if self.storage.is_file(uri) else None

    def write_record(self, record: dict) -> None:
        """Write the run record (rank 0; whole or not at all)."""
        self.local.mkdir(parents=True, exist_ok=True)
        self.storage.write_text(join(self.uri, RUN_RECORD), json.dumps(record, indent=2))

    def clear_checkpoints(self) -> None:
        """Remove every checkpoint (a run that starts over; rank 0)."""
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)
        if self.remote:
            self.storage.delete(join(self.uri, CHECKPOINTS))

    def checkpoint_steps(self, *, required: tuple[str, ...] = ()) -> list[int]:
        """Steps of the complete checkpoints, oldest first. Locally a checkpoint is complete when the Trainer's
        ``trainer_state.json`` (written last) and the ``required`` files are there; remotely, when rank 0 marked it."""
        steps = []
        if self.remote:
            for entry in self.storage.list(join(self.uri, CHECKPOINTS)):
                step = _step(entry.name)
                if entry.is_dir and step is not None and self.storage.is_file(join(entry.uri, COMPLETE)):
                    steps.append(step)
        elif self.checkpoints_dir.is_dir():
            for folder in self.checkpoints_dir.iterdir():
                step = _step(folder.name)
                if step is not None and all((folder / name).exists() for name in ("trainer_state.json", *required)):
                    steps.append(step)
        return sorted(steps)

    def fetch(self, step: int) -> Path:
        """The checkpoint of ``step`` as a local folder on this machine (downloaded once per machine when remote)."""
        folder = self.checkpoints_dir / f"checkpoint-{step}"
        if self.remote:
            import fcntl

            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
            with open(str(folder) + ".lock", "w") as lock:  # ranks on one machine download it once
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (folder / COMPLETE).exists():
                    shutil.rmtree(folder, ignore_errors=True)
                    self.storage.download(join(self.uri, CHECKPOINTS, folder.name), str(folder))
        return folder

    def publish_checkpoint(self, step: int, *, rank: int, world: int, keep: int | None, barrier) -> None:
        """Upload what this rank wrote of checkpoint ``step``; after ``barrier()``, rank 0 marks it complete and
        prunes the older ones beyond ``keep``. A no-op for a local output."""
        if not self.remote:
            return
        folder = self.checkpoints_dir / f"checkpoint-{step}"
        target = join(self.uri, CHECKPOINTS, folder.name)
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.is_file() and _written_by(path.name, rank, world):
                with open(path, "rb") as src, self.storage.write(join(target, *path.relative_to(folder).parts)) as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
        barrier()
        if rank == 0:
            self.storage.write_text(join(target, COMPLETE), str(step))
            for old in self.checkpoint_steps()[:-keep] if keep else []:
                self.storage.delete(join(self.uri, CHECKPOINTS, f"checkpoint-{old}"))

    def publish(self, local_folder: Path, name: str) -> str:
        """Upload a finished local folder (the final model) as ``<output>/<name>`` (rank 0); returns its URI."""
        target = join(self.uri, name)
        if self.remote:
            self.storage.delete(target)
            self.storage.upload(str(local_folder), target)
        return target


def _step(name: str) -> int | None:
    prefix, _, number = name.rpartition("-")
    return int(number) if prefix == "checkpoint" and number.isdigit() else None


def _written_by(name: str, rank: int, world: int) -> bool:
    """Whether ``rank`` uploads a checkpoint file: each rank its own RNG state (``rng_state_<rank>.pth``), rank 0
    everything else (the Trainer's other files are written by rank 0, or are the same on every rank)."""
    if name.startswith("rng_state_") and world > 1:
        return name == f"rng_state_{rank}.pth"
    return rank == 0


def remove_local_copy(folder: RunFolder) -> None:
    """Delete this machine's working copy of a remote run once it is uploaded (the URI keeps everything)."""
    if folder.remote:
        shutil.rmtree(folder.local, ignore_errors=True)
