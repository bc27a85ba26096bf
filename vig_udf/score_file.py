"""``vig score-file``: a LLaVA JSON / JSONL file scored in this process, each result written as it is done.

The records are scored in lists of ``chunk`` (the next list is prepared while the model scores the current one,
:meth:`vig_udf.scoring.scorer.VIGScorer.score_stream`); each list's results are written, in input order, and
flushed as soon as it is scored, and a progress line (records done, rate, time left) goes to ``progress``.
With ``counterfactual=mismatched`` the partners are drawn among the file's records by the partner rule
(:func:`vig_udf.scoring.partners.assign_partners`), before any is scored.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

# the shipped configs' scorer.max_length (conf/local.yaml): a sample longer than this is 'truncated', not run
DEFAULT_MAX_LENGTH = 2048


def score_records(scorer, records: list[dict], out: Path, *, chunk: int,
                  progress: Callable[[str], None]) -> dict[str, int]:
    """Score ``records`` with ``scorer`` into the JSONL file ``out`` (one line per record, in input order);
    returns the count of each status."""
    from vig_udf.scoring.partners import assign_partners

    options = scorer.options
    if options.counterfactual == "mismatched":
        records = assign_partners(records, seed=options.partner_seed, scope=options.partner_scope,
                                  image_root=options.image_root, storage=scorer.storage)
    counts: dict[str, int] = {}
    lists = (records[start:start + chunk] for start in range(0, len(records), chunk))
    started, done = time.monotonic(), 0
    with out.open("w") as f:
        for results in scorer.score_stream(lists):
            for result in results:
                counts[result.status] = counts.get(result.status, 0) + 1
                row = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in result.to_dict().items()}
                f.write(json.dumps({"scorer_id": scorer.scorer_id, **row}) + "\n")
            f.flush()
            done += len(results)
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed else 0.0
            left = f", {(len(records) - done) / rate:.0f} s left" if rate and done < len(records) else ""
            progress(f"scored {done}/{len(records)} records ({rate:.2f} records/s{left})")
    return counts


def scorer_config(model: str, overrides: list[str], config: Path | None = None):
    """The scorer's settings: ``config``'s ``score.scorer`` section (when given), then ``overrides``
    (``key=value``); ``max_length`` is :data:`DEFAULT_MAX_LENGTH` unless one of them sets it (null for none)."""
    from vig_udf.config import ScorerConfig, load_config

    given = [f"model_path={model}", *overrides]
    if config is not None:
        from vig_udf.spark.score_job import ScoreJobConfig

        cfg = load_config(ScoreJobConfig, config, [f"scorer.{o}" for o in given], section="score").scorer
        explicit = "max_length" in (cfg.model_fields_set or set())
    else:
        cfg = load_config(ScorerConfig, None, given)
        explicit = False
    explicit = explicit or any(o.split("=", 1)[0].strip() == "max_length" for o in overrides)
    if len(cfg.counterfactual_names()) > 1:
        from vig_udf.errors import InputError

        raise InputError(f"vig score-file scores one counterfactual, not counterfactuals={cfg.counterfactuals}: set "
                         "counterfactual=<name>, or score several at once with vig score")
    return cfg if explicit else cfg.model_copy(update={"max_length": DEFAULT_MAX_LENGTH})
