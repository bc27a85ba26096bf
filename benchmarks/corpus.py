"""Seeded synthetic LLaVA-format records whose shape roughly follows an instruction-tuning mix like LLaVA-665K.

Used by the throughput benchmarks: what matters for speed is the number of tokens per sample (image
tokens plus text), the number of answer tokens, the number of turns and the image sizes, not the meaning
of the text. The text is drawn from a word list (a few real function words, then synthetic syllable
words with a Zipf-like frequency), so it tokenizes like running text but reads as nonsense.

THIS IS AN APPROXIMATION, NOT MEASURED STATISTICS. The only number taken from a source is the share of
text-only rows: the LLaVA-1.5 paper (Liu et al., "Improved Baselines with Visual Instruction Tuning",
data-mixture table) lists about 40K ShareGPT text-only conversations in the 665K mix, about 6%. Every
other proportion and length below is an assumption chosen to reproduce the qualitative picture (most
rows are short-answer VQA, VQA questions about one image are often grouped into multi-turn rows, a
minority are long descriptions or free-form conversations); it was not fitted to the real data set.

Row kinds (probability, turns, words per user turn, words per answer):

==============  =====  ======================  =====================================  ===================
kind            p      assistant turns         user turn                              answer (words)
==============  =====  ======================  =====================================  ===================
vqa_short       0.30   1                       question 5-14 words + VQA suffix       1-3
vqa_multi       0.34   2-8 (uniform)           question 5-14 words + VQA suffix       1-3 per turn
conversation    0.20   2-5 (uniform)           question 6-20 words                    20-90 per turn
detail          0.10   1                       request 6-12 words                     100-300
text_only       0.06   1-3 (uniform), no image question 8-40 words                    30-250 per turn
==============  =====  ======================  =====================================  ===================

The VQA suffix is LLaVA-1.5's "Answer the question using a single word or phrase." (on every VQA turn,
as in the released mix). Image rows put ``<image>\\n`` before the first question 80% of the time and
``\\n<image>`` after it otherwise (LLaVA-665K has both placements). Images are RGB, width and height
each uniform in [320, 640] pixels, a random background with 3-8 random rectangles and ellipses (so that
a Gaussian blur changes the pixels). All lengths are uniform integers in the given closed ranges.

>>> rows = make_corpus(4, seed=0)
>>> sorted(rows[0])
['conversations', 'id', 'image']
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

VQA_SUFFIX = "Answer the question using a single word or phrase."


@dataclass(frozen=True)
class Kind:
    name: str
    p: float
    turns: tuple[int, int]
    user_words: tuple[int, int]
    answer_words: tuple[int, int]
    has_image: bool = True
    vqa: bool = False


KINDS: tuple[Kind, ...] = (
    Kind("vqa_short", 0.30, (1, 1), (5, 14), (1, 3), vqa=True),
    Kind("vqa_multi", 0.34, (2, 8), (5, 14), (1, 3), vqa=True),
    Kind("conversation", 0.20, (2, 5), (6, 20), (20, 90)),
    Kind("detail", 0.10, (1, 1), (6, 12), (100, 300)),
    Kind("text_only", 0.06, (1, 3), (8, 40), (30, 250), has_image=False),
)
IMAGE_SIDE = (320, 640)
IMAGE_FIRST_P = 0.8

_FUNCTION_WORDS = (
    "the a of and is in on to with what there are this that it at left right side color colour image "
    "picture man woman person red blue green yellow white black two three one next behind front top "
    "bottom how many which where who does do can be near small large his her their its as by from"
).split()
_ONSETS = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "sk", "sl", "st", "th", "tr"]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "oo", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "ng", "ck", "nd", "st", "rk"]


def word_list(n: int = 24000, seed: int = 1234) -> list[str]:
    """``n`` distinct words: the function words first, then synthetic 1-4 syllable words (fixed seed)."""
    rng = random.Random(seed)
    words = list(dict.fromkeys(_FUNCTION_WORDS))
    seen = set(words)
    while len(words) < n:
        syllables = rng.choice((1, 2, 2, 2, 3, 3, 4))
        w = "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(syllables))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class _Text:
    """Zipf-like word sampler (rank ** -1.07) that builds sentences with capitals and full stops."""

    def __init__(self, rng: np.random.Generator, words: list[str]):
        self.rng = rng
        self.words = np.array(words, dtype=object)
        weights = 1.0 / np.arange(1, len(words) + 1) ** 1.07
        self.cdf = np.cumsum(weights / weights.sum())

    def words_(self, n: int) -> list[str]:
        idx = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), len(self.words) - 1)
        return list(self.words[idx])

    def prose(self, n: int) -> str:
        words = self.words_(n)
        out, since = [], 0
        for i, w in enumerate(words):
            if since == 0:
                w = w.capitalize()
            since += 1
            last = i == len(words) - 1
            if last or (since >= 6 and self.rng.random() < 0.12):
                w += "."
                since = 0
            elif self.rng.random() < 0.05:
                w += ","
            out.append(w)
        return " ".join(out)

    def question(self, n: int) -> str:
        return " ".join(self.words_(n)).capitalize() + "?"

    def short_answer(self, n: int) -> str:
        return " ".join(self.words_(n)).capitalize()


def _uniform(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    return int(rng.integers(bounds[0], bounds[1] + 1))


def make_image(rng: np.random.Generator, side: tuple[int, int] = IMAGE_SIDE) -> Image.Image:
    """An RGB image of random size with a random background and 3-8 random filled shapes."""
    w, h = _uniform(rng, side), _uniform(rng, side)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(_uniform(rng, (3, 8))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = int(rng.integers(x0 + 10, w)), int(rng.integers(y0 + 10, h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
    return img


def make_record(index: int, rng: np.random.Generator, text: _Text, kinds=KINDS) -> dict:
    """One LLaVA-format record ``{"id", "image", "conversations"}`` of a kind drawn from ``kinds``."""
    probs = np.array([k.p for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=probs / probs.sum()))]
    conversations = []
    for t in range(_uniform(rng, kind.turns)):
        n_user, n_answer = _uniform(rng, kind.user_words), _uniform(rng, kind.answer_words)
        if kind.vqa:
            user, answer = f"{text.question(n_user)}\n{VQA_SUFFIX}", text.short_answer(n_answer)
        elif kind.name == "detail":
            user, answer = text.prose(n_user), text.prose(n_answer)
        else:
            user, answer = text.question(n_user), text.prose(n_answer)
        if t == 0 and kind.has_image:
            user = f"<image>\n{user}" if rng.random() < IMAGE_FIRST_P else f"{user}\n<image>"
        conversations += [{"from": "human", "value": user}, {"from": "gpt", "value": answer}]
    image = make_image(rng) if kind.has_image else None
    return {"id": f"{kind.name}-{index:06d}", "image": image, "conversations": conversations}


def make_corpus(n: int, seed: int = 0, *, kinds=KINDS) -> list[dict]:
    """``n`` records, deterministic for a given ``seed`` (see the module docstring for the distribution)."""
    rng = np.random.default_rng(seed)
    text = _Text(rng, word_list())
    return [make_record(i, rng, text, kinds) for i in range(n)]


def tokenizer_training_text(n_lines: int = 4000, seed: int = 99) -> list[str]:
    """Text from the same word distribution, to train a BPE tokenizer whose vocabulary covers it."""
    rng = np.random.default_rng(seed)
    text = _Text(rng, word_list())
    lines = [text.prose(int(rng.integers(20, 120))) for _ in range(n_lines)]
    # every word at least once, with and without a leading space, so that rare words get merges too
    words = word_list()
    lines += [" ".join(words[i:i + 50]) for i in range(0, len(words), 50)]
    lines += [VQA_SUFFIX, "USER: ASSISTANT: </s>"] * 20
    return lines


def describe(records: list[dict]) -> dict:
    """Summary of a corpus: rows per kind, text-only share, assistant turns and answer words (mean, max)."""
    kinds = Counter(r["id"].rsplit("-", 1)[0] for r in records)
    turns = [sum(t["from"] == "gpt" for t in r["conversations"]) for r in records]
    answer_words = [sum(len(t["value"].split()) for t in r["conversations"] if t["from"] == "gpt") for r in records]
    return {
        "rows": len(records),
        "kinds": dict(sorted(kinds.items())),
        "text_only_share": round(sum(r["image"] is None for r in records) / max(len(records), 1), 3),
        "assistant_turns_mean": round(float(np.mean(turns)), 2) if records else 0.0,
        "answer_words_mean": round(float(np.mean(answer_words)), 1) if records else 0.0,
        "answer_words_max": max(answer_words, default=0),
    }


if __name__ == "__main__":
    import json
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(json.dumps(describe(make_corpus(n)), indent=2))
