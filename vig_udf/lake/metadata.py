"""Commit metadata: what each commit records about the job that made it, and how to read it back.

Every commit carries ``job`` (the job's name), ``config`` (the job's resolved config as JSON),
``code_version`` (the package version plus the git commit of the source tree, when there is one) and
``write_id`` (a random id that lets the writer find its own commit in the history). With an app
transaction it also records ``app_id`` and ``app_version``. The dictionary is stored as JSON in the
commit's ``userMetadata``, which ``DESCRIBE HISTORY`` shows. Settings that hold credentials (a key named like
a secret, password, token or access key, e.g. ``spark.hadoop.fs.s3a.secret.key``) are recorded as
``<redacted>``: everyone who can read the table can read its history.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import lru_cache
from pathlib import Path

METADATA_KEYS = ("job", "config", "code_version", "write_id", "app_id", "app_version")
# a key, or the last dot-separated segment of a Spark/Hadoop key, naming a secret (fs.s3a.secret.key, session.token,
# password), or an Azure account key; not a field that merely ends in a word like token (image_token)
SECRET_KEY = re.compile(r"(^|\.)(secret|password|passwd|token|credentials?)$|(^|[._-])(secret|access|private|api)[._-]?key$"
                        r"|account[._-]key([._-]|$)", re.IGNORECASE)
REDACTED = "<redacted>"


def redacted(value):
    """``value`` (a config as JSON types) with the values of credential-like keys replaced by ``<redacted>``."""
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and SECRET_KEY.search(k) and v is not None else redacted(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>`` plus ``+g<git commit>`` (and ``.dirty`` for uncommitted changes) if known."""
    from vig_udf import __version__

    source = Path(__file__).resolve().parents[2]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return __version__
        dirty = git("diff", "--quiet", "HEAD", "--").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{head.stdout.strip()}" + (".dirty" if dirty else "")


def commit_metadata(
    *, job: str, config: dict, write_id: str, app_id: str | None = None, app_version: int | None = None
) -> dict[str, str]:
    """The metadata of one commit (string values; ``config`` is JSON with sorted keys)."""
    if not job or not isinstance(job, str):
        raise ValueError(f"job must be a non-empty string naming the job that writes, got {job!r}")
    if not isinstance(config, dict):
        raise TypeError(
            f"config must be a dict (the job's resolved config), got {type(config).__name__}; "
            "for a pydantic model pass cfg.model_dump(mode='json')"
        )
    metadata = {
        "job": job,
        "config": json.dumps(redacted(config), sort_keys=True, default=str),
        "code_version": code_version(),
        "write_id": write_id,
    }
    if app_id is not None:
        metadata.update(app_id=app_id, app_version=str(app_version))
    return metadata


def history_entry(commit: dict) -> dict:
    """One entry of ``table_history`` from a row of Delta's history (``DESCRIBE HISTORY``) as a dict.

    Keys: ``version``, ``timestamp``, ``operation``, ``metrics`` (the commit's operation metrics, as ints
    where they are numbers), and each of ``METADATA_KEYS`` (``None`` where the commit does not have it;
    ``config`` parsed back into a dict).
    """
    metadata = dict.fromkeys(METADATA_KEYS)
    user_metadata = commit.get("userMetadata")
    if user_metadata:
        try:
            parsed = json.loads(user_metadata)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            metadata.update({key: parsed[key] for key in METADATA_KEYS if key in parsed})
    try:
        if isinstance(metadata["config"], str):
            metadata["config"] = json.loads(metadata["config"])
        if metadata["app_version"] is not None:
            metadata["app_version"] = int(metadata["app_version"])
    except (TypeError, ValueError):  # another writer's userMetadata that only looks like ours
        metadata = dict.fromkeys(METADATA_KEYS)
    metrics = {k: int(v) if str(v).lstrip("-").isdigit() else v for k, v in (commit.get("operationMetrics") or {}).items()}
    return {"version": commit["version"], "timestamp": commit.get("timestamp"), "operation": commit.get("operation"),
            "metrics": metrics, **metadata}
