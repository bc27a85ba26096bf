"""The lake's tables read without Spark: Delta tables opened by delta-rs (``deltalake``) at the latest or a
pinned version, the lake's table folders listed, and a table's history, for the read-only commands
(``vig sql``, ``vig lake history``) on a local folder or an ``s3a://`` / ``s3://`` lake.

Object storage is reached with the same settings Spark uses: the ``spark.hadoop.fs.s3a.*`` entries of the
config's ``spark.conf`` (endpoint, region, path-style access, SSL, access and secret keys, session token, and
their per-bucket ``fs.s3a.bucket.<bucket>.*`` forms) become delta-rs's storage options; what they leave
unset, delta-rs takes from the usual AWS environment variables, profiles and instance roles.
"""

from __future__ import annotations

from vig_udf.errors import InputError
from vig_udf.lake.metadata import history_entry
from vig_udf.lake.paths import STAGING, table_uri
from vig_udf.storage import Storage, scheme_of

S3A_PREFIX = "spark.hadoop.fs.s3a."
# Hadoop s3a setting -> delta-rs (object_store) storage option
_S3A_OPTIONS = {
    "endpoint.region": "AWS_REGION",
    "access.key": "AWS_ACCESS_KEY_ID",
    "secret.key": "AWS_SECRET_ACCESS_KEY",
    "session.token": "AWS_SESSION_TOKEN",
}
OBJECT_STORE_SCHEMES = ("s3a://", "s3://")


class LakeReadError(InputError):
    """A table or version that the local reader cannot open (no table there, a version it does not have)."""


def reads_locally(uri: str) -> bool:
    """Whether delta-rs reads ``uri`` with the settings this module maps: a local path or an S3 lake."""
    return scheme_of(table_uri(uri)) in (None, "s3a", "s3")


def delta_rs_uri(uri) -> str:
    """``uri`` as delta-rs names it: ``s3a://`` becomes ``s3://``; a local path stays a path."""
    text = table_uri(uri)
    return "s3://" + text.removeprefix("s3a://") if text.startswith("s3a://") else text


def storage_options(uri, spark_conf: dict[str, str] | None = None) -> dict[str, str]:
    """delta-rs storage options for ``uri`` from Spark's s3a settings (none for a local path).

    Example::

        storage_options("s3a://b/lake", {"spark.hadoop.fs.s3a.endpoint": "http://127.0.0.1:9000"})
        # {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true"}
    """
    text = table_uri(uri)
    if not text.startswith(OBJECT_STORE_SCHEMES):
        return {}
    bucket = text.split("://", 1)[1].split("/", 1)[0]
    s3a = {key.removeprefix(S3A_PREFIX): str(value) for key, value in (spark_conf or {}).items()
           if key.startswith(S3A_PREFIX)}
    per_bucket = f"bucket.{bucket}."
    settings = {key: value for key, value in s3a.items() if not key.startswith("bucket.")}
    settings.update({key.removeprefix(per_bucket): value for key, value in s3a.items() if key.startswith(per_bucket)})
    options = {option: settings[key] for key, option in _S3A_OPTIONS.items() if settings.get(key)}
    ssl = settings.get("connection.ssl.enabled", "true").strip().lower() != "false"
    endpoint = settings.get("endpoint")
    if endpoint:
        if "://" not in endpoint:
            endpoint = ("https://" if ssl else "http://") + endpoint
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if "path.style.access" in settings:
        path_style = settings["path.style.access"].strip().lower() == "true"
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false" if path_style else "true"
    if "AnonymousAWSCredentialsProvider" in settings.get("aws.credentials.provider", ""):
        options["AWS_SKIP_SIGNATURE"] = "true"
    return options


def open_table(path, *, version: int | None = None, spark_conf: dict[str, str] | None = None):
    """The Delta table at ``path`` opened by delta-rs, at ``version`` (default: the latest).

    Raises :class:`LakeReadError` with a one-line reason when there is no table there or no such version.
    """
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from vig_udf.lake.read import has_delta_log

    uri = table_uri(path)
    options = storage_options(uri, spark_conf)
    no_table = LakeReadError(f"No Delta table at {uri} (no commit in its _delta_log); check the path or write it "
                             "first.")
    if not has_delta_log(Storage.from_conf(spark_conf), uri):  # delta-rs: "No files in log segment" for _staged_commits
        raise no_table
    try:
        table = DeltaTable(delta_rs_uri(uri), storage_options=options or None)
    except TableNotFoundError:
        raise LakeReadError(f"No Delta table at {uri} (no _delta_log there); check the path or write it "
                            "first.") from None
    if version is not None:
        latest = table.version()
        if not 0 <= version <= latest:
            raise LakeReadError(f"{uri} has versions 0 to {latest}; there is no version {version}.")
        try:
            table.load_as_version(int(version))
        except Exception as error:  # noqa: BLE001 - a version whose log VACUUM or log clean-up removed
            raise LakeReadError(f"cannot read version {version} of {uri}: {str(error).splitlines()[0]}") from None
    return table


def lake_tables(root, *, spark_conf: dict[str, str] | None = None) -> list[str]:
    """Names of the folders directly under the lake ``root`` that hold a Delta table, sorted (staging
    excluded); the local reader's counterpart of :func:`vig_udf.lake.views.lake_tables`, through the storage
    layer with the same settings."""
    from vig_udf.lake.read import has_delta_log

    storage = Storage.from_conf(spark_conf)
    folders = [e for e in storage.list(table_uri(root)) if e.is_dir and e.name != STAGING]
    return [e.name for e in folders if has_delta_log(storage, e.uri)]


def table_history(path, *, limit: int | None = None, spark_conf: dict[str, str] | None = None) -> list[dict]:
    """The table's commits, newest first, as :func:`vig_udf.lake.table_history` returns them (read by delta-rs;
    ``timestamp`` is the commit's own time as a naive local datetime, as pyspark returns Spark's)."""
    from datetime import datetime

    commits = open_table(path, spark_conf=spark_conf).history(limit)
    entries = []
    for commit in commits:
        stamp = commit.get("timestamp")
        entries.append(history_entry({**commit, "timestamp": None if stamp is None else
                                      datetime.fromtimestamp(stamp / 1000)}))
    return entries
