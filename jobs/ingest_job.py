"""spark-submit entry point: `spark-submit jobs/ingest_job.py --config conf/local.yaml [key=value ...]`."""

import sys

from vig_udf.cli import app

if __name__ == "__main__":
    app(["ingest", *sys.argv[1:]])
