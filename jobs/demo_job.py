"""The demo job (spark-submit-free for now): `python jobs/demo_job.py [key=value ...]`."""

import sys

from vig_udf.cli import app

if __name__ == "__main__":
    app(["demo", *sys.argv[1:]])
