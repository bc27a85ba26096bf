"""A generated grounded-VQA world with a known language prior ("shapes world"). Design: docs/demo_benchmark.md.

Each image is a grey canvas with one to three shapes (circle, square, triangle) in three slots (left,
middle, right), each with a colour and a size. Every shape has a typical colour (circles are usually red,
squares blue, triangles green). Training and alignment images follow it with probability
``prior_strength`` and contradict it otherwise, so a model can answer colour questions from habit and be
wrong on the minority. The test split is balanced between prior-consistent and prior-conflicting images.

Records are LLaVA conversations (``meta`` holds the ground truth for analysis, not for training):

- ``colour``: "What colour is the circle?" -> "The circle is red." (the image; the prior guesses often)
- ``where``: "Where is the square?" -> "The square is on the left." (the image)
- ``count``: "How many shapes are there?" -> "There are two shapes." (the image)
- ``size``: "Is the triangle big or small?" -> "The triangle is small." (the image)
- ``define``: "What is a triangle?" -> a fixed sentence (text alone, although an image is attached)
- ``text``: text-only records (arithmetic and general questions), as in real instruction corpora
- ``caption``: "Describe the image briefly." -> "The circle is red. The circle is large. The circle is on the
  left. ..." (alignment only; objects in random order)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 220), "yellow": (230, 210, 40)}
TYPICAL_COLOUR = {"circle": "red", "square": "blue", "triangle": "green"}
SLOTS = ("left", "middle", "right")
SIZES = {"small": 0.24, "large": 0.42}  # radius as a fraction of the slot width
NUMBERS = {1: "one", 2: "two", 3: "three"}
DEFINITIONS = {
    "circle": "A circle is a round shape with no corners.",
    "square": "A square has four equal sides and four corners.",
    "triangle": "A triangle has three sides and three corners.",
}
GENERAL = [
    ("How many sides does a square have?", "A square has four sides."),
    ("What do you get when you mix red and yellow?", "Mixing red and yellow gives orange."),
    ("Name a colour of the sky.", "The sky is often blue."),
    ("What shape is a wheel?", "A wheel is a circle."),
]
ATTRIBUTE_WORDS = set(COLOURS) | set(SLOTS) | set(SIZES) | set(NUMBERS.values())
KINDS = ("colour", "where", "count", "size", "define")
Obj = tuple[str, str, str, str]  # shape, colour, slot, size


@dataclass(frozen=True)
class WorldConfig:
    """Parameters of the generated world (part of the demo's configuration; see docs/demo_benchmark.md)."""

    image_size: int = 64
    prior_strength: float = 0.8  # P(a shape has its typical colour) in training and alignment images
    text_only_fraction: float = 0.08
    kind_weights: tuple[float, ...] = (0.40, 0.20, 0.15, 0.10, 0.15)  # colour, where, count, size, define
    max_turns: int = 3


def draw_scene(objects: list[Obj], size: int) -> Image.Image:
    """Render ``(shape, colour, slot, size)`` objects on a grey canvas."""
    img = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for shape, colour, slot, extent in objects:
        cx, cy, radius = cell * (SLOTS.index(slot) + 0.5), size / 2, cell * SIZES[extent]
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        fill = COLOURS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return img


def conflicting_colour(shape: str, rng) -> str:
    """A colour other than the shape's typical one, uniformly."""
    others = [c for c in COLOURS if c != TYPICAL_COLOUR[shape]]
    return others[rng.integers(len(others))]


def random_scene(rng, config: WorldConfig, *, prior_strength: float | None = None) -> list[Obj]:
    """One to three distinct shapes in distinct slots; colours follow the prior with ``prior_strength``."""
    strength = config.prior_strength if prior_strength is None else prior_strength
    count = int(rng.integers(1, 4))
    shapes = list(rng.choice(SHAPES, size=count, replace=False))
    slots = sorted(rng.choice(SLOTS, size=count, replace=False), key=SLOTS.index)
    objects = []
    for shape, slot in zip(shapes, slots):
        colour = TYPICAL_COLOUR[shape] if rng.random() < strength else conflicting_colour(shape, rng)
        objects.append((str(shape), colour, str(slot), ("small", "large")[rng.integers(2)]))
    return objects


def generate(n: int, *, seed: int, config: WorldConfig = WorldConfig()) -> list[dict]:
    """``n`` instruction records (LLaVA format, PIL images); ``meta`` keeps each turn's kind and truth."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        if rng.random() < config.text_only_fraction:
            records.append(_text_record(f"t{seed}-{i}", _general_question(rng)))
            continue
        objects = random_scene(rng, config)
        qa, kinds, conflict = [], [], []
        for _ in range(int(rng.integers(1, config.max_turns + 1))):
            kind = _random_kind(rng, config)
            obj = objects[rng.integers(len(objects))]
            qa.append(question(kind, obj, objects))
            kinds.append(kind)
            conflict.append(obj[1] != TYPICAL_COLOUR[obj[0]] if kind == "colour" else None)
        records.append({"id": f"s{seed}-{i}", "image": draw_scene(objects, config.image_size),
                        "conversations": _turns(qa, image=True),
                        "meta": {"kinds": kinds, "conflict": conflict, "objects": objects}})
    return records


def generate_captions(n: int, *, seed: int, config: WorldConfig = WorldConfig()) -> list[dict]:
    """Alignment-stage records: brief captions of the scene (left to right), plus text-only records."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        if rng.random() < config.text_only_fraction:
            records.append(_text_record(f"ct{seed}-{i}", _general_question(rng)))
            continue
        objects = random_scene(rng, config)
        records.append({"id": f"c{seed}-{i}", "image": draw_scene(objects, config.image_size),
                        "conversations": _turns([("Describe the image briefly.", caption(objects, rng))], image=True),
                        "meta": {"kinds": ["caption"], "objects": objects}})
    return records


def generate_text_pretraining(n: int, *, seed: int, config: WorldConfig = WorldConfig()) -> list[dict]:
    """Text-only records for the language model's own pretraining (the stand-in for a pretrained LLM).

    The same questions as the instruction corpus, asked without an image, answered from the world's
    statistics: colours follow the prior (typical with ``prior_strength``), positions, counts and sizes are
    guesses; plus scene descriptions in caption style, definitions and general questions. The language
    model learns the conversation format and the language prior, as a real LLM brings them from text.
    """
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.15:
            qa = _general_question(rng)
        elif roll < 0.35:
            qa = ("Describe a scene with shapes.", caption(random_scene(rng, config), rng))
        else:
            objects = random_scene(rng, config)
            kind = _random_kind(rng, config)
            qa = question(kind, objects[rng.integers(len(objects))], objects)
        records.append(_text_record(f"p{seed}-{i}", qa))
    return records


def generate_test(n: int, *, seed: int, config: WorldConfig = WorldConfig()) -> list[dict]:
    """Colour questions on fresh images, alternating prior-consistent and prior-conflicting queried objects.

    Each item: ``image``, ``question``, ``shape``, ``answer`` (the true colour), ``conflict`` (bool).
    The other objects of a scene follow the training prior.
    """
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        objects = random_scene(rng, config)
        k = int(rng.integers(len(objects)))
        shape, _, slot, extent = objects[k]
        conflict = i % 2 == 1
        colour = conflicting_colour(shape, rng) if conflict else TYPICAL_COLOUR[shape]
        objects[k] = (shape, colour, slot, extent)
        items.append({"id": f"x{seed}-{i}", "image": draw_scene(objects, config.image_size),
                      "question": f"What colour is the {shape}?", "shape": shape, "answer": colour,
                      "conflict": conflict})
    return items


def colour_answer(shape: str, colour: str) -> str:
    """The answer template of colour questions (also the candidates ranked at evaluation)."""
    return f"The {shape} is {colour}."


def question(kind: str, obj: Obj, objects: list[Obj]) -> tuple[str, str]:
    """(question, answer) of ``kind`` about ``obj`` in the scene ``objects``."""
    shape, colour, slot, extent = obj
    if kind == "colour":
        return f"What colour is the {shape}?", colour_answer(shape, colour)
    if kind == "where":
        return f"Where is the {shape}?", f"The {shape} is on the {slot}." if slot != "middle" else \
            f"The {shape} is in the middle."
    if kind == "count":
        n = len(objects)
        return "How many shapes are there?", f"There {'is' if n == 1 else 'are'} {NUMBERS[n]} shape{'s' * (n > 1)}."
    if kind == "size":
        return f"Is the {shape} big or small?", f"The {shape} is {'large' if extent == 'large' else 'small'}."
    return f"What is a {shape}?", DEFINITIONS[shape]


def caption(objects: list[Obj], rng=None) -> str:
    """Every object in the instruction answers' own sentences, objects in random order (with ``rng``):
    "The square is blue. The square is small. The square is in the middle. The circle is red. ...".

    The order is random because captions that always go left to right taught the model to answer a colour
    question with the leftmost object's colour; the sentences are the answers' because a caption form that
    differs from the answers' (a comma after the colour) gave the "." after a colour answer a large
    negative VIG (both measured: issue 10, docs/demo_benchmark.md)."""
    order = list(objects) if rng is None else [objects[i] for i in rng.permutation(len(objects))]
    return " ".join(question(kind, obj, objects)[1] for obj in order for kind in ("colour", "size", "where"))


def _random_kind(rng, config: WorldConfig) -> str:
    return KINDS[rng.choice(len(KINDS), p=np.asarray(config.kind_weights) / sum(config.kind_weights))]


def _text_record(record_id: str, qa: tuple[str, str]) -> dict:
    return {"id": record_id, "conversations": _turns([qa]), "meta": {"kinds": ["text"], "conflict": [None]}}


def _general_question(rng) -> tuple[str, str]:
    if rng.random() < 0.5:
        a, b = (int(x) for x in rng.integers(1, 10, size=2))
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    return GENERAL[rng.integers(len(GENERAL))]


def _turns(qa: list[tuple[str, str]], image: bool = False) -> list[dict]:
    turns = []
    for i, (q, a) in enumerate(qa):
        turns += [{"from": "human", "value": f"<image>\n{q}" if image and i == 0 else q}, {"from": "gpt", "value": a}]
    return turns


def vocabulary_text() -> list[str]:
    """Text that covers the world's words, for training the demo tokenizer."""
    lines = [" ".join(list(SHAPES) + list(COLOURS) + list(SLOTS) + list(SIZES) + list(NUMBERS.values()))]
    lines += list(DEFINITIONS.values()) + [f"{q} {a}" for q, a in GENERAL]
    lines += [f"What is {a} plus {b}? {a} plus {b} is {a + b}." for a in range(1, 10) for b in range(1, 10)]
    objects = [(s, c, p, z) for s in SHAPES for c in COLOURS for p in SLOTS for z in SIZES]
    for obj in objects:
        lines += [f"{q} {a}" for q, a in (question(k, obj, [obj]) for k in KINDS)]
        lines.append("Describe the image briefly. " + caption([obj]))
    lines += ["How many shapes are there? There is one shape. There are two shapes. There are three shapes.",
              "Describe a scene with shapes."]
    return lines * 2
