"""spark-submit entry point: `spark-submit jobs/export_job.py --config conf/local.yaml [key=value ...]`."""

import sys

from vig_udf.cli import app

if __name__ == "__main__":
    app(["export", *sys.argv[1:]])
