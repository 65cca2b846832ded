"""Shared fixtures: a registry of the built-ins and a small real image-text data set."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Registry

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 230, 20),
}
SHAPES = ("square", "circle", "triangle")


@pytest.fixture(scope="session")
def registry() -> Registry:
    """The built-in plugins only (installed third-party plugins are not loaded)."""
    return load_plugins(entry_points=False)


def draw_shape(color: str, shape: str, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (40, 40), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    x, y = rng.randint(2, 10), rng.randint(2, 10)
    if shape == "square":
        draw.rectangle([x, y, x + 26, y + 26], fill=COLORS[color])
    elif shape == "circle":
        draw.ellipse([x, y, x + 26, y + 26], fill=COLORS[color])
    else:
        draw.polygon([(x, y + 26), (x + 13, y), (x + 26, y + 26)], fill=COLORS[color])
    return image


def write_shapes(directory: Path, count: int, seed: int = 0) -> Path:
    """PNG images of colored shapes with captions ("a red circle") and a JSONL manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        draw_shape(color, shape, rng).save(directory / f"img{index}.png")
        lines.append(json.dumps({"image": f"img{index}.png", "text": f"a {color} {shape}"}))
    manifest = directory / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="session")
def shapes_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 shape images with captions."""
    return write_shapes(tmp_path_factory.mktemp("shapes"), 96)
