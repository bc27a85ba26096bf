"""Runs a ``vig`` command in this process, with one step of the score job's write path replaced by a SIGKILL
of this process group (the Python driver, its Spark JVM and the Python workers), as a crash would.

Used by tests/test_lake_concurrency.py. Usage:
    python tests/lake_fault_job.py during_commit|between_commits|after_last_commit <vig arguments...>
``during_commit``: inside the first commit's MERGE, while later tasks still score. ``between_commits``: right
after the first commit. ``after_last_commit``: after the last commit, before the scored parts are deleted.
"""

import os
import signal
import sys

import vig_udf.lake.write as write
import vig_udf.spark.score_job as score_job


def _die(*_args, **_kwargs):
    os.killpg(0, signal.SIGKILL)


def _die_after(real):
    def call(*args, **kwargs):
        result = real(*args, **kwargs)
        _die()
        return result

    return call


if __name__ == "__main__":
    where, *command = sys.argv[1:]
    if where == "during_commit":
        write._create_or_merge = _die
    elif where == "between_commits":
        score_job.commit_parts = _die_after(score_job.commit_parts)
    elif where == "after_last_commit":
        write.delete_staged = _die
    else:
        raise SystemExit(f"unknown fault point {where!r}")
    from vig_udf.cli import app

    app(command)
