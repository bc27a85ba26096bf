"""A generated visual-QA world with a known language prior ("shapes world").

Each image is a grey canvas with one to three coloured shapes in three slots (left, middle, right).
Every shape kind has a typical colour (circles are usually red, squares blue, triangles green) that the
images follow with probability ``prior_strength`` and contradict otherwise, so that a model can answer
colour questions from habit and be wrong on the minority.

Question kinds and what they need:
- ``colour``: "What colour is the circle?" -> "The circle is red." (the image; the prior guesses often)
- ``count``: "How many shapes are there?" -> "There are two shapes." (the image)
- ``where``: "Where is the square?" -> "The square is on the left." (the image)
- ``define``: "What is a triangle?" -> a fixed sentence (text alone; low VIG expected)
- text-only records (no image) with generic answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}
TYPICAL_COLOUR = {"circle": "red", "square": "blue", "triangle": "green"}
SLOTS = ("left", "middle", "right")
NUMBERS = {1: "one", 2: "two", 3: "three"}
DEFINITIONS = {
    "circle": "A circle is a round shape with no corners.",
    "square": "A square has four equal sides and four corners.",
    "triangle": "A triangle has three sides and three corners.",
}
TEXT_ONLY = [
    ("How many sides does a square have?", "A square has four sides."),
    ("What do you get when you mix red and yellow?", "Mixing red and yellow gives orange."),
    ("Name a colour of the sky.", "The sky is often blue."),
]


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the generated world (part of the demo's configuration)."""

    image_size: int = 64
    prior_strength: float = 0.8  # P(a shape has its typical colour)
    text_only_fraction: float = 0.1
    define_fraction: float = 0.15
    max_turns: int = 3


def draw_scene(objects: list[tuple[str, str, str]], size: int) -> Image.Image:
    """Render ``(shape, colour, slot)`` objects on a grey canvas."""
    img = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    cell = size / 3
    radius = cell * 0.38
    for shape, colour, slot in objects:
        cx, cy = cell * (SLOTS.index(slot) + 0.5), size / 2
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return img


def generate(n: int, *, seed: int, config: WorldConfig = WorldConfig()) -> list[dict]:
    """``n`` LLaVA-format records with PIL images; each turn's kind is kept in ``meta`` for analysis."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        if rng.random() < config.text_only_fraction:
            q, a = TEXT_ONLY[rng.integers(len(TEXT_ONLY))]
            records.append({"id": f"t{seed}-{i}", "conversations": _turns([(q, a)]), "meta": {"kinds": ["text"]}})
            continue
        count = int(rng.integers(1, 4))
        shapes = list(rng.choice(SHAPES, size=count, replace=False))
        slots = list(rng.choice(SLOTS, size=count, replace=False))
        objects = []
        for shape, slot in zip(shapes, slots):
            typical = TYPICAL_COLOUR[shape]
            others = [c for c in COLOURS if c != typical]
            colour = typical if rng.random() < config.prior_strength else others[rng.integers(len(others))]
            objects.append((shape, colour, slot))
        qa, kinds = [], []
        for _ in range(int(rng.integers(1, config.max_turns + 1))):
            kind, q, a = _question(rng, objects, config)
            qa.append((q, a))
            kinds.append(kind)
        records.append({
            "id": f"s{seed}-{i}", "image": draw_scene(objects, config.image_size), "conversations": _turns(qa, image=True),
            "meta": {"kinds": kinds, "objects": objects},
        })
    return records


def _question(rng, objects, config: WorldConfig) -> tuple[str, str, str]:
    shape, colour, slot = objects[rng.integers(len(objects))]
    if rng.random() < config.define_fraction:
        return "define", f"What is a {shape}?", DEFINITIONS[shape]
    kind = ("colour", "count", "where")[rng.integers(3)]
    if kind == "colour":
        return kind, f"What colour is the {shape}?", f"The {shape} is {colour}."
    if kind == "count":
        n = len(objects)
        return kind, "How many shapes are there?", f"There {'is' if n == 1 else 'are'} {NUMBERS[n]} shape{'s' * (n > 1)}."
    return kind, f"Where is the {shape}?", f"The {shape} is on the {slot}."


def _turns(qa: list[tuple[str, str]], image: bool = False) -> list[dict]:
    turns = []
    for i, (q, a) in enumerate(qa):
        turns += [{"from": "human", "value": f"<image>\n{q}" if image and i == 0 else q}, {"from": "gpt", "value": a}]
    return turns


def vocabulary_text() -> list[str]:
    """Text that covers the world's words, for training the demo tokenizer."""
    words = list(SHAPES) + list(COLOURS) + list(SLOTS) + list(NUMBERS.values())
    lines = [" ".join(words)] + list(DEFINITIONS.values()) + [f"{q} {a}" for q, a in TEXT_ONLY]
    lines += [f"What colour is the {s}? The {s} is {c}. Where is the {s}? The {s} is on the {p}."
              for s in SHAPES for c in COLOURS for p in SLOTS]
    lines += ["How many shapes are there? There is one shape. There are two shapes. There are three shapes."]
    return lines * 3
