"""vig-spark: Visual Information Gain scoring and selective training for vision-language models."""

from vig_udf.results import ScoreResult
from vig_udf.scorer import ScorerOptions, VIGScorer

__version__ = "0.1.0"
__all__ = ["ScoreResult", "ScorerOptions", "VIGScorer", "__version__"]
