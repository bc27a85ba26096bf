"""The per-sample result of VIG scoring."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from vig_udf.scoring.metric import mean_nll, sample_vig, token_vig
from vig_udf.scoring.masking import AnswerTokens


def _empty(dtype) -> np.ndarray:
    return np.zeros(0, dtype=dtype)


@dataclass
class ScoreResult:
    """One scored sample. Token arrays are aligned: element i describes the sample's i-th answer token.

    ``token_turn`` is the answer-turn index (0 = first assistant turn) and ``token_char_start`` /
    ``token_char_end`` the token's character span inside that turn's answer text. ``vig``, ``nll_with``
    and ``nll_without`` are None unless ``status == "ok"``; a text-only sample still carries its answer
    tokens (training keeps them whole). ``counterfactual_partner``: the id of the sample whose image was the
    ``mismatched`` counterfactual (None for the other counterfactuals). ``image_vig``: with
    ``image_attribution``, one sample VIG per image of the record, that image alone replaced by the
    counterfactual (None otherwise).
    """

    sample_id: str
    status: str
    counterfactual: str
    error: str | None = None
    counterfactual_partner: str | None = None
    vig: float | None = None
    nll_with: float | None = None
    nll_without: float | None = None
    n_tokens: int = 0
    token_ids: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    token_vig: np.ndarray = field(default_factory=lambda: _empty(np.float32))
    logp_with: np.ndarray = field(default_factory=lambda: _empty(np.float32))
    logp_without: np.ndarray = field(default_factory=lambda: _empty(np.float32))
    token_turn: np.ndarray = field(default_factory=lambda: _empty(np.int32))
    token_char_start: np.ndarray = field(default_factory=lambda: _empty(np.int32))
    token_char_end: np.ndarray = field(default_factory=lambda: _empty(np.int32))
    image_vig: np.ndarray | None = None

    @classmethod
    def scored(cls, sample_id: str, counterfactual: str, tokens: AnswerTokens,
               logp_with: np.ndarray, logp_without: np.ndarray, *, partner: str | None = None,
               image_vig: list[float] | None = None) -> "ScoreResult":
        """An ``ok`` result from the two passes' log-probabilities of the answer tokens."""
        tv = token_vig(logp_with, logp_without)
        return cls(
            sample_id=sample_id, status="ok", counterfactual=counterfactual, counterfactual_partner=partner,
            vig=sample_vig(tv), nll_with=mean_nll(logp_with), nll_without=mean_nll(logp_without),
            n_tokens=len(tokens), token_ids=tokens.token_ids, token_vig=tv.astype(np.float32),
            logp_with=np.asarray(logp_with, dtype=np.float32), logp_without=np.asarray(logp_without, dtype=np.float32),
            token_turn=tokens.turn, token_char_start=tokens.char_start, token_char_end=tokens.char_end,
            image_vig=None if image_vig is None else np.asarray(image_vig, dtype=np.float32),
        )

    @classmethod
    def unscored(cls, sample_id: str, counterfactual: str, status: str, error: str | None,
                 tokens: AnswerTokens | None = None, *, partner: str | None = None) -> "ScoreResult":
        """A result without VIG (text-only or failed), with the answer tokens when they are known."""
        result = cls(sample_id=sample_id, status=status, counterfactual=counterfactual, error=error,
                     counterfactual_partner=partner)
        if tokens is not None:
            result.n_tokens = len(tokens)
            result.token_ids = tokens.token_ids
            result.token_turn = tokens.turn
            result.token_char_start = tokens.char_start
            result.token_char_end = tokens.char_end
        return result

    def to_dict(self) -> dict:
        """Plain dict (numpy arrays kept), e.g. for ``pandas.DataFrame`` or Arrow conversion."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
