"""One training process as an executor runs it: its environment is its own (no credentials of the driver's),
only what the train job passes reaches it. Used by tests/test_mlflow_auth.py. Usage:
    python tests/rank_job.py <arguments.json>
with ``{"settings", "train_set", "output_dir", "tracking"}``; prints the result's steps, or exits 3 with the
message of a TrackingUnreachable error.
"""

import json
import sys

from vig_udf.train.trainer import TrackingUnreachable, train_selected

if __name__ == "__main__":
    arguments = json.loads(open(sys.argv[1]).read())
    try:
        result = train_selected(arguments["settings"], arguments["train_set"], arguments["output_dir"],
                                tracking=arguments["tracking"])
    except TrackingUnreachable as error:
        print(error)
        sys.exit(3)
    print(json.dumps({"steps": result["steps"]}))
