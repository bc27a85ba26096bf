"""vig-spark: Visual Information Gain scoring and selective training for vision-language models.

The scorer classes are imported lazily, so that Spark Python workers that only move Arrow data or write
Delta files (``vig_udf.lake``, ``vig_udf.corpus``) do not pay for importing torch and transformers.
"""

__version__ = "0.1.0"
__all__ = ["ScoreResult", "ScorerOptions", "VIGScorer", "__version__"]


def __getattr__(name: str):
    if name == "ScoreResult":
        from vig_udf.scoring.results import ScoreResult

        return ScoreResult
    if name == "ScorerOptions":
        from vig_udf.scoring.options import ScorerOptions

        return ScorerOptions
    if name == "VIGScorer":
        from vig_udf.scoring import scorer

        return scorer.VIGScorer
    raise AttributeError(f"module 'vig_udf' has no attribute {name!r}")
