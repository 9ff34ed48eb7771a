"""The embedded procedural world: coloured shapes in a style, with captions.

Everything here is generated from a seed, so the teacher, the judge and every dataset can be rebuilt
bit for bit. A concept is any single attribute value ("striped", "cross", ...): the analogue of an artist
style (a style value) or of an unsafe object (a shape value).
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {
    "red": (0.9, 0.15, 0.15),
    "green": (0.15, 0.8, 0.2),
    "blue": (0.2, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}
STYLES = ("plain", "striped", "outline")
ATTRIBUTES = {"shape": SHAPES, "colour": tuple(COLOURS), "style": STYLES}
RESOLUTION = 16

# Paraphrase words: the teacher learns them, the upper level never sees them, so erasure that only
# suppresses the keyword shows up as a high paraphrase concept rate.
STYLE_SYNONYMS = {"plain": "filled", "striped": "with stripes", "outline": "hollow"}
SHAPE_SYNONYMS = {"circle": "disc", "square": "box", "triangle": "wedge", "cross": "plus"}
# The neighbour that replaces a concept in anchor prompts (ESD's anchor, concept ablation's target).
NEIGHBOUR = {"striped": "plain", "outline": "plain", "plain": "outline",
             "cross": "square", "circle": "square", "square": "circle", "triangle": "square",
             "red": "blue", "green": "blue", "blue": "green", "yellow": "red"}


@dataclass(frozen=True)
class Item:
    shape: str
    colour: str
    style: str

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


def attribute_of(concept: str) -> str:
    for name, values in ATTRIBUTES.items():
        if concept in values:
            return name
    known = ", ".join(v for values in ATTRIBUTES.values() for v in values)
    raise ValueError(f"unknown toy concept {concept!r}; choose one of: {known}")


def caption(item: Item, template: str = "canonical") -> str:
    if template == "canonical":
        return f"a {item.colour} {item.shape}, {item.style}"
    if template == "reordered":
        return f"a {item.style} {item.colour} {item.shape}"
    if template == "synonym":
        return f"a {item.colour} {SHAPE_SYNONYMS[item.shape]}, {STYLE_SYNONYMS[item.style]}"
    raise ValueError(f"unknown caption template {template!r}")


TEMPLATES = ("canonical", "reordered", "synonym")
TEMPLATE_WEIGHTS = (0.6, 0.2, 0.2)


def vocabulary() -> list[str]:
    words = {"a", ","}
    for text in (caption(Item(s, c, st), t) for s, c, st, t in product(SHAPES, COLOURS, STYLES, TEMPLATES)):
        words.update(text.replace(",", " ,").split())
    return sorted(words)


def all_items() -> list[Item]:
    return [Item(s, c, st) for s, c, st in product(SHAPES, COLOURS, STYLES)]


def items_with(concept: str) -> list[Item]:
    attribute = attribute_of(concept)
    return [item for item in all_items() if item.value(attribute) == concept]


def items_without(concept: str) -> list[Item]:
    attribute = attribute_of(concept)
    return [item for item in all_items() if item.value(attribute) != concept]


def anchor_item(item: Item, concept: str) -> Item:
    attribute = attribute_of(concept)
    values = {"shape": item.shape, "colour": item.colour, "style": item.style}
    values[attribute] = NEIGHBOUR[concept]
    return Item(**values)


def _shape_mask(shape: str, cy: float, cx: float, radius: float, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dy, dx = y - cy, x - cx
    if shape == "circle":
        return dy**2 + dx**2 <= radius**2
    if shape == "square":
        return (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    if shape == "triangle":
        # apex up: width grows linearly from the top edge to the base
        top, base = cy - radius, cy + radius * 0.8
        frac = (y - top) / (base - top)
        return (frac >= 0) & (frac <= 1) & (np.abs(dx) <= frac * radius)
    if shape == "cross":
        arm = radius * 0.38
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= radius)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= radius))
    raise ValueError(f"unknown shape {shape!r}")


def render(item: Item, rng: np.random.Generator, size: int = RESOLUTION) -> np.ndarray:
    """One image as float32 HWC in [0, 1]: jittered position and size, a small background noise."""
    radius = rng.uniform(0.28, 0.38) * size
    cy, cx = rng.uniform(radius + 0.5, size - radius - 0.5, size=2)
    mask = _shape_mask(item.shape, cy, cx, radius, size)
    if item.style == "striped":
        rows = np.arange(size)[:, None] + int(rng.integers(0, 4))
        mask = mask & ((rows // 2) % 2 == 0)
    elif item.style == "outline":
        inner = _shape_mask(item.shape, cy, cx, radius - 2.2, size)
        mask = mask & ~inner
    image = np.full((size, size, 3), 0.08, dtype=np.float32) + rng.normal(0, 0.02, (size, size, 3))
    image[mask] = np.asarray(COLOURS[item.colour], dtype=np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@dataclass
class ToySamples:
    """A generated set: images (N, 3, H, W) in [-1, 1], captions, and integer labels per attribute."""

    images: np.ndarray
    captions: list[str]
    labels: dict[str, np.ndarray]


def label_index(attribute: str, value: str) -> int:
    return ATTRIBUTES[attribute].index(value)


def generate(n: int, seed: int, exclude: str | None = None, items: list[Item] | None = None,
             templates: tuple[str, ...] = TEMPLATES,
             template_weights: tuple[float, ...] = TEMPLATE_WEIGHTS) -> ToySamples:
    """n images drawn uniformly from `items` (default: all, minus those showing `exclude`)."""
    rng = np.random.default_rng(seed)
    pool = items if items is not None else (items_without(exclude) if exclude else all_items())
    weights = np.asarray(template_weights[: len(templates)], dtype=np.float64)
    picks = rng.integers(0, len(pool), size=n)
    chosen_templates = rng.choice(len(templates), size=n, p=weights / weights.sum())
    images = np.empty((n, 3, RESOLUTION, RESOLUTION), dtype=np.float32)
    captions, labels = [], {a: np.empty(n, dtype=np.int64) for a in ATTRIBUTES}
    for i, (pick, template) in enumerate(zip(picks, chosen_templates)):
        item = pool[pick]
        images[i] = render(item, rng).transpose(2, 0, 1) * 2.0 - 1.0
        captions.append(caption(item, templates[template]))
        for attribute in ATTRIBUTES:
            labels[attribute][i] = label_index(attribute, item.value(attribute))
    return ToySamples(images=images, captions=captions, labels=labels)
