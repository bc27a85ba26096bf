"""Progress of a running score job: rows scored and committed, rows per second and time left.

The score job's driver looks at the scored part files as its tasks write them (one per task, see
:mod:`vig_udf.spark.score_udf`) to commit them; the same look counts the rows scored, so progress needs no
Spark accumulator and reads the same on a classic session and on Spark Connect. The count moves by whole
tasks (``rows_per_task`` rows); until the first task ends the line says so, with the time elapsed.
"""

from __future__ import annotations

import time


class Progress:
    """``progress.maybe_print(scored, committed)`` prints a line at most every ``every_s`` seconds (``every_s``
    <= 0: never); :meth:`line` is the line itself."""

    def __init__(self, total: int, *, out=print, every_s: float = 30.0, clock=time.monotonic):
        self.total, self.out, self.every_s, self.clock = total, out, every_s, clock
        self.started = self.last = clock()

    def maybe_print(self, scored: int, committed: int) -> None:
        """Print the line if ``every_s`` seconds have passed since the last one."""
        now = self.clock()
        if self.every_s > 0 and self.total > 0 and now - self.last >= self.every_s:
            self.last = now
            self.out(self.line(scored, committed))

    def line(self, scored: int, committed: int) -> str:
        """The progress line for ``scored`` rows scored, ``committed`` of them in the table."""
        elapsed = self.clock() - self.started
        done = min(scored, self.total)
        if done == 0:
            return f"progress: 0 of {self.total} rows scored after {_duration(elapsed)} (counted as tasks finish)"
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("inf")
        return (f"progress: {done} of {self.total} rows scored ({done / self.total:.0%}), {committed} committed, "
                f"{rate:.2f} rows/s, about {_duration(left)} left")


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
