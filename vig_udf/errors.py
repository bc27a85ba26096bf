"""Every way a ``vig`` command can fail, as one class per exit code, and the translation of Spark's, Delta's,
py4j's and the OS's exceptions into them (:func:`classify`).

A command ends with ``vig <command>: <what happened>: <the cause, in one line>``, a line saying what to do,
and, for anything but bad input, the path of a log file holding the full (Java) trace; ``vig --debug`` prints
the trace to stderr instead. The exit codes (README, "Exit codes"):

- 2 :class:`InputError`: a bad input file or setting, a refused statement, an unknown table or version
- 3 :class:`LakeDamagedError`: a commit file that does not parse, a data file a version needs is missing
- 4 :class:`StorageError`: no space left on the device, the object store unreachable, a URI not opened here
- 5 :class:`LakePermissionError`: a read-only file system, a folder or bucket this user may not write
- 6 :class:`ConcurrentWriteError`: other writers kept winning every attempt of a commit
- 9 :class:`InternalError`: anything else, a bug, reported with its trace

(1 stays the verdict of ``vig check`` when the scorer fails its sanity check.)
"""

from __future__ import annotations

import re


class VigError(Exception):
    """A failure with a one-line message, what to do about it, and its exit code."""

    exit_code = 9
    label = "internal error"

    def __init__(self, message: str, *, todo: str | None = None):
        super().__init__(message)
        self.todo = todo


class InputError(VigError, ValueError):
    """A whole input, setting or statement is unusable; the message says which and why."""

    exit_code = 2
    label = "bad input"


class LakeDamagedError(VigError):
    """A table's log or data files are damaged or missing: the lake itself needs repair."""

    exit_code = 3
    label = "lake damaged"


class StorageError(VigError, OSError):
    """The storage is unavailable or full (a URI that cannot be opened here, no space left, no connection)."""

    exit_code = 4
    label = "storage unavailable or full"


class LakePermissionError(VigError, PermissionError):
    """This process may not write (or read) where the command needs to: a read-only lake, a denied bucket."""

    exit_code = 5
    label = "permission denied"


class ConcurrentWriteError(VigError, RuntimeError):
    """Other writers kept committing to the table: every attempt of this write conflicted with one."""

    exit_code = 6
    label = "concurrent writers won every retry"


class InternalError(VigError):
    """An unexpected failure: a bug to report, with the log file's trace."""

    exit_code = 9


EXIT_CODES = {cls.exit_code: cls for cls in (InputError, LakeDamagedError, StorageError, LakePermissionError,
                                              ConcurrentWriteError, InternalError)}

_COMMIT = re.compile(r"(?P<table>[^/\s`'\"]+)/_delta_log/(?P<file>(?P<version>\d{20})\.(?:json|checkpoint[^\s'\"]*))")
_CAUSED_BY = re.compile(r"^\s*Caused by: (?P<cause>.+)$", re.MULTILINE)
_DATA_FILE = re.compile(r"(?:file:|s3a?://|abfss?://|gs://|dbfs:)?(?P<path>/?[^\s'\"]*?/(?P<table>[^/\s'\"]+)/"
                        r"(?P<file>part-[^/\s'\"]+\.parquet))")
_PACKAGE = re.compile(r"\b(?:[a-z_][a-z0-9_]*\.)+(?=[A-Z][A-Za-z0-9]*(?:Exception|Error)\b)")
_NO_SPACE = ("No space left on device", "Disk quota exceeded", "ENOSPC")
_READ_ONLY = ("Read-only file system", "Permission denied", "AccessDeniedException", "Access Denied",
              "AccessDenied", "EACCES", "EROFS")
_UNREACHABLE = ("ConnectException", "Connection refused", "UnknownHostException", "SocketTimeoutException",
                "ConnectTimeoutException", "NoRouteToHostException", "Unable to execute HTTP request")
_DAMAGED_LOG = ("ChecksumException", "JsonParseException", "JsonEOFException", "MismatchedInputException",
                "DELTA_VERSIONS_NOT_CONTIGUOUS", "DELTA_STATE_RECOVER_ERROR", "DELTA_LOG_FILE_NOT_FOUND",
                "DELTA_CHECKPOINT_NON_EXIST_TABLE", "DELTA_TRUNCATED_TRANSACTION_LOG", "DELTA_MISSING_PART_FILES",
                "DELTA_INVALID_CHECKPOINT",
                "Checksum error", "Unexpected end-of-input", "No files in log segment",
                "Failed to read checkpoint", "_last_checkpoint", "versions are not contiguous",
                "Invalid JSON in log record", "InvalidJsonLog")
_MISSING_FILE = ("FAILED_READ_FILE.FILE_NOT_EXIST", "DELTA_FILE_NOT_FOUND_DETAILED", "FileNotFoundException",
                 "DELTA_FILE_NOT_FOUND")


def error_text(error: BaseException) -> str:
    """Everything an exception says about itself: its message, its Java trace (py4j's and pyspark's captured
    exceptions carry it) and those of the exceptions it was raised from."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts.append(f"{type(error).__module__}.{type(error).__name__}: {error}")
        for attribute in ("_stackTrace", "stackTrace"):  # pyspark's CapturedException: the JVM's trace
            trace = getattr(error, attribute, None)
            if isinstance(trace, str) and trace:
                parts.append(trace)
                break
        java = getattr(error, "java_exception", None)  # py4j's Py4JJavaError: str() has the trace already
        if java is not None and "Caused by" not in str(error):
            try:
                parts.append(str(java.toString()))
            except Exception:  # noqa: BLE001 - the JVM may be gone
                pass
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def cause_line(error: BaseException, text: str | None = None, needles=()) -> str:
    """The cause in one line: the first line of the trace naming one of ``needles`` (what classified it), else the
    deepest ``Caused by:`` of the Java trace, else the exception's first line; Java package names left out."""
    text = error_text(error) if text is None else text
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("at ")]
    index = next((i for i, ln in enumerate(lines) if any(n in ln for n in needles)), None)
    line = None if index is None else lines[index]
    if line is not None and line.endswith(":") and index + 1 < len(lines):  # "ParseException:" then its reason
        line = f"{line} {lines[index + 1]}"
    if line is None:
        causes = _CAUSED_BY.findall(text)
        line = causes[-1] if causes else next((ln for ln in str(error).strip().splitlines() if ln.strip()), "")
    line = _PACKAGE.sub("", line.strip().removeprefix("Caused by: ")) or type(error).__name__
    return line if len(line) <= 400 else line[:397] + "..."


def classify(error: BaseException) -> VigError:
    """``error`` as the :class:`VigError` of its class (itself when it is one already), with a message naming
    what happened and what to do."""
    if isinstance(error, VigError):
        return error
    text = error_text(error)
    cause = lambda needles=(): cause_line(error, text, needles)  # noqa: E731
    if _has(text, _NO_SPACE):
        return StorageError(f"the disk is full: {cause(_NO_SPACE)}",
                            todo="free space where the lake and Spark's local folders (spark.local.dir) are, then "
                                 "run the command again: the failed command committed nothing")
    if _has(text, _READ_ONLY) or isinstance(error, PermissionError):
        return LakePermissionError(f"the lake or a folder it needs cannot be written: {cause(_READ_ONLY)}",
                                   todo="run as a user that may write the lake (or mount it read-write); the failed "
                                        "command committed nothing")
    if _has(text, _DAMAGED_LOG):
        return damaged_log_error(text, cause(_DAMAGED_LOG))
    if _has(text, _MISSING_FILE):
        match = _DATA_FILE.search(text)
        if match:
            table = match.group("table")
            return LakeDamagedError(
                f"the {table} table's data file {match.group('file')} is missing: {cause(_MISSING_FILE)}",
                todo=f"restore the file from a backup, or `vig lake restore {table} version=N` to a version from "
                     f"before it was written (`vig lake history {table}`, `vig lake check`)")
    if _has(text, _UNREACHABLE):
        return StorageError(f"the storage cannot be reached: {cause(_UNREACHABLE)}",
                            todo="check the endpoint, network and credentials in the config's spark.conf, then run "
                                 "the command again")
    if _is_conflict(error):
        return ConcurrentWriteError(f"a concurrent commit conflicted with this one: {cause()}",
                                    todo="run the command again when the other writers are done")
    if type(error).__module__.startswith("pyspark.errors") and type(error).__name__ in (
            "AnalysisException", "ParseException", "IllegalArgumentException"):
        return InputError(cause())
    if type(error) in (FileNotFoundError, ValueError):  # our own checks of names and settings (no table there)
        return InputError(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    return InternalError(f"unexpected {type(error).__name__}: {cause()}",
                         todo="this is a bug: report it with the log file below")


def damaged_log_error(text: str, cause: str) -> LakeDamagedError:
    """The error of a damaged Delta log: the commit (or ``_last_checkpoint``) that ``text`` names, what to do."""
    match = _COMMIT.search(text)
    if "_last_checkpoint" in text and (match is None or "_last_checkpoint" in cause):
        table = re.search(r"([^/\s`'\"]+)/_delta_log/_last_checkpoint", text)
        name = table.group(1) if table else "a"
        return LakeDamagedError(
            f"the {name} table's _delta_log/_last_checkpoint is damaged: {cause}",
            todo=f"delete _delta_log/_last_checkpoint of the {name} table (Delta then finds its checkpoints by "
                 "listing the log), or restore it from a backup")
    if match is None:
        return LakeDamagedError(f"a table's Delta log is damaged: {cause}",
                                todo="run `vig lake check TABLE` to find the damaged commit, then restore it from a "
                                     "backup or `vig lake restore TABLE version=N`")
    table, file = match.group("table"), match.group("file")
    return LakeDamagedError(
        f"the {table} table's commit {file} is damaged: {cause}",
        todo=f"restore {file} from a backup (`vig lake history {table}` lists the versions that can still be read, "
             f"`vig lake check {table}` every damaged file)")


def _has(text: str, needles) -> bool:
    return any(needle in text for needle in needles)


def _is_conflict(error: BaseException) -> bool:
    try:
        from vig_udf.lake.write import conflict_exceptions

        return isinstance(error, conflict_exceptions())
    except ImportError:  # no delta-spark here: nothing can be one of its conflicts
        return False
