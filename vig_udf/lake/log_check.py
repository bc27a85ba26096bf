"""A table's Delta log read file by file, without Delta: which commits parse and which do not, which versions
are missing, whether ``_last_checkpoint`` parses, and whether the files the latest version needs exist.

``vig lake history`` and :func:`vig_udf.lake.table_history` read the commits from it (the latter leaves a log
with a damaged or missing commit to ``DESCRIBE HISTORY``, for Delta's own error), and ``vig lake check``
reports it. Read through the storage layer (:mod:`vig_udf.storage`): a local lake or
one on object storage alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from vig_udf.lake.metadata import history_entry
from vig_udf.lake.paths import table_uri
from vig_udf.storage import Storage, join

_COMMIT = re.compile(r"^(\d{20})\.json$")
_CHECKPOINT = re.compile(r"^(\d{20})\.checkpoint(\.\d+\.\d+)?\.parquet$")
_CHECKSUM = re.compile(r"^\.?(\d{20})(?:\.json)?\.crc$")  # Delta's version checksum and Hadoop's .json.crc


@dataclass
class LogReport:
    """What the log of one table holds; ``problems`` is empty for a sound log."""

    uri: str
    commits: dict[int, dict] = field(default_factory=dict)  # version -> its commitInfo (empty if it has none)
    damaged: dict[int, str] = field(default_factory=dict)  # version -> why its commit does not parse
    missing: list[int] = field(default_factory=list)  # versions with no commit file where one must be
    checkpoint_problem: str | None = None
    missing_files: list[str] = field(default_factory=list)  # files of the latest version that are not there

    @property
    def latest(self) -> int | None:
        versions = set(self.commits) | set(self.damaged) | set(self.missing)
        return max(versions) if versions else None

    @property
    def problems(self) -> list[str]:
        """One line per problem, in version order."""
        lines = [f"commit {v:020d}.json is damaged: {why}" for v, why in sorted(self.damaged.items())]
        lines += [f"commit {v:020d}.json is missing (its checksum file is there, or later versions are)"
                  for v in self.missing]
        if self.checkpoint_problem:
            lines.append(f"_delta_log/_last_checkpoint is damaged: {self.checkpoint_problem}")
        lines += [f"data file {name} of the latest version is missing" for name in self.missing_files]
        return lines


def read_log(storage: Storage, path, *, newest: int | None = None) -> LogReport:
    """Parse every commit of the table at ``path`` (each line one JSON action; only the ``newest`` commits when
    given) and look for gaps: a version between the oldest kept commit (or checkpoint) and the newest that has no
    commit file, and a checksum file whose commit is gone (a deleted newest commit). The commit files are read
    in parallel (an object store answers each read in tens of milliseconds)."""
    from concurrent.futures import ThreadPoolExecutor

    uri = table_uri(path)
    log = join(uri, "_delta_log")
    report = LogReport(uri)
    entries = {e.name: e for e in storage.list(log) if not e.is_dir}
    versions = {int(m.group(1)): name for name in entries if (m := _COMMIT.match(name))}
    checkpoints = {int(m.group(1)) for name in entries if (m := _CHECKPOINT.match(name))}
    wanted = sorted(versions)[-newest:] if newest is not None else sorted(versions)
    with ThreadPoolExecutor(max_workers=min(16, max(1, len(wanted)))) as pool:
        for version, parsed in zip(wanted, pool.map(lambda v: _commit_info(storage, join(log, versions[v])), wanted)):
            if isinstance(parsed, dict):
                report.commits[version] = parsed
            else:
                report.damaged[version] = parsed
    checksums = {int(m.group(1)) for name in entries if (m := _CHECKSUM.match(name))}
    if versions or checksums:
        # the log is complete from the newest checkpoint on, and from version 0 without one (log clean-up
        # removes only commits that a checkpoint replaces)
        first = max(checkpoints, default=0)
        last = max(set(versions) | checksums)
        report.missing = [v for v in range(first, last + 1) if v not in versions and v not in checkpoints]
    if "_last_checkpoint" in entries:
        try:
            json.loads(storage.read_text(join(log, "_last_checkpoint")))
        except (ValueError, UnicodeDecodeError) as error:
            report.checkpoint_problem = str(error).splitlines()[0]
    return report


def _commit_info(storage: Storage, uri: str) -> dict | str:
    """The commitInfo of one commit file (empty if it has none), or why the file does not parse."""
    try:
        actions = [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
        if not actions or not all(isinstance(a, dict) for a in actions):
            raise ValueError("no actions" if not actions else "a line is not a JSON object")
        return next((a["commitInfo"] for a in actions if "commitInfo" in a), {})
    except (ValueError, UnicodeDecodeError, OSError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__


def log_history(report: LogReport, *, limit: int | None = None) -> list[dict]:
    """The readable commits of ``report``, newest first, as :func:`vig_udf.lake.table_history` returns them."""
    newest_first = sorted(report.commits, reverse=True)[:limit]
    return [commit_entry(version, report.commits[version]) for version in newest_first]


def commit_entry(version: int, info: dict) -> dict:
    """The :func:`vig_udf.lake.table_history` entry of a commit's ``commitInfo`` (its ``timestamp`` in ms)."""
    from datetime import datetime

    stamp = info.get("timestamp")
    when = datetime.fromtimestamp(stamp / 1000) if stamp else None
    return history_entry({**info, "version": version, "timestamp": when})


def check_files(storage: Storage, report: LogReport, files: list[str]) -> LogReport:
    """Record in ``report`` which of ``files`` (the latest version's data files, as URIs) are not there."""
    report.missing_files = [f.rsplit("/", 1)[-1] for f in files if storage.info(f) is None]
    return report
