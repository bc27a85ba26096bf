"""Runs a ``vig`` command in this process, with one step of the lake's write path replaced by a SIGKILL
of this process group (the Python driver, its Spark JVM and the Python workers), as a crash would.

Used by tests/test_lake_concurrency.py. Usage:
    python tests/lake_fault_job.py before_merge|after_commit <vig arguments...>
``before_merge``: the scored rows are staged, nothing is committed. ``after_commit``: the merge has
committed, its staged rows are not deleted yet.
"""

import os
import signal
import sys

import vig_udf.lake.write as write


def _die(*_args, **_kwargs):
    os.killpg(0, signal.SIGKILL)


if __name__ == "__main__":
    where, *command = sys.argv[1:]
    if where == "before_merge":
        write._create_or_merge = _die
    elif where == "after_commit":
        write.delete_folder = _die
    else:
        raise SystemExit(f"unknown fault point {where!r}")
    from vig_udf.cli import app

    app(command)
