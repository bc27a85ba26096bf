"""Progress of a running score job: rows done, rows per second and time left, printed every few seconds.

The scoring function adds each finished Arrow batch's rows to a Spark accumulator; a driver thread reads it
every ``every_s`` seconds and prints a line. Spark sends a task's accumulator updates to the driver when the
task ends, so the count moves by whole tasks (the score job's partitions); until the first task ends the
line says so, with the time elapsed. A last line follows when the job's tasks are done.
"""

from __future__ import annotations

import threading
import time


class Progress:
    """``with Progress(spark, total, out=print, every_s=30) as rows:`` pass ``rows`` (an accumulator) to the
    tasks; a line is printed every ``every_s`` seconds while the block runs (``every_s`` <= 0: none)."""

    def __init__(self, spark, total: int, *, out=print, every_s: float = 30.0, clock=time.monotonic):
        self.rows = spark.sparkContext.accumulator(0)
        self.total = total
        self.out = out
        self.every_s = every_s
        self.clock = clock
        self.started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self):
        self.started = self.clock()
        if self.every_s > 0 and self.total > 0:
            self._thread = threading.Thread(target=self._report, name="vig-score-progress", daemon=True)
            self._thread.start()
        return self.rows

    def __exit__(self, exc_type, *_) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if exc_type is None:
                self.out(self.line())  # the last count: every task has ended

    def line(self) -> str:
        """The progress line for the rows counted so far."""
        elapsed = self.clock() - self.started
        done = min(self.rows.value, self.total)
        if done == 0:
            return f"progress: 0 of {self.total} rows done after {_duration(elapsed)} (counted as tasks finish)"
        rate = done / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else float("inf")
        return (f"progress: {done} of {self.total} rows ({done / self.total:.0%}), {rate:.2f} rows/s, "
                f"about {_duration(left)} left")

    def _report(self) -> None:
        while not self._stop.wait(self.every_s):
            self.out(self.line())


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
