"""vig-spark: Visual Information Gain scoring and selective training for vision-language models.

The scorer classes are imported lazily, so that Spark Python workers that only move Arrow data or write
Delta files (``vig_udf.lake``, ``vig_udf.corpus``) do not pay for importing torch and transformers.
"""

__version__ = "0.1.0"
__all__ = ["ScoreResult", "ScorerOptions", "VIGScorer", "__version__"]


def __getattr__(name: str):
    if name == "ScoreResult":
        from vig_udf.results import ScoreResult

        return ScoreResult
    if name in ("ScorerOptions", "VIGScorer"):
        from vig_udf import scorer

        return getattr(scorer, name)
    raise AttributeError(f"module 'vig_udf' has no attribute {name!r}")
