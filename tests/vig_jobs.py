"""Runs ``vig`` commands one after another in this one process (one Python, one Spark JVM), each when the
test asks for it, so that a test can run several phases of concurrent jobs without starting a process and
a JVM per job.

Used by tests/test_lake_concurrency.py. Usage: ``python tests/vig_jobs.py``, then one JSON line per command
on stdin: ``[log_path, *vig_arguments]``. The command's Python output goes to ``log_path`` (the Spark JVM,
started by the first command, keeps writing to the first log); when it ends, its exit status is written as
one line on stdout. The process ends at the end of stdin.
"""

import json
import os
import sys
import traceback


def run_command(arguments: list[str]) -> int:
    """Run ``vig <arguments>`` as the command line does; returns its exit status (1 for an exception)."""
    from vig_udf.cli import app

    try:
        app(arguments)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except Exception:  # the command line's own failure: its traceback, exit status 1
        traceback.print_exc()
        return 1
    return 0


def main() -> None:
    status = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        log, *arguments = json.loads(line)
        sys.stdout.flush(), sys.stderr.flush()
        with open(log, "w") as out:
            os.dup2(out.fileno(), 1), os.dup2(out.fileno(), 2)
            code = run_command(arguments)
            sys.stdout.flush(), sys.stderr.flush()
        status.write(f"{code}\n")
        status.flush()


if __name__ == "__main__":
    main()
