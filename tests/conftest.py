"""Shared fixtures: a registry of the built-ins and a small real image-text data set."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Registry
from modaloom.core.spec import resolve_tree

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


def shrink_to_small_digits(tree: dict[str, Any], cache: Path) -> dict[str, Any]:
    """A preset's tree made quick: a 48/24-clip digits-av build in ``cache``, 2-3 steps."""
    for section in ("sources", "eval_sources"):
        for source in tree["data"].get(section, {}).values():
            if source["type"] == "digits_av":
                source.update(cache_dir=str(cache), num_train_clips=48, num_test_clips=24)
    tree["data"].update(batch_size=8, num_workers=0, eval_batch_size=12)
    tree["train"].update(checkpoint_every=1000, log_every=1)
    if "stages" in tree["train"]:
        for stage in tree["train"]["stages"]:
            stage["steps"] = 2
    else:
        tree["train"]["steps"] = 3
    for evaluator in tree.get("eval", []):
        if evaluator["type"] == "captioning":
            evaluator.update(num_beams=1, max_length=6)
    return tree


@pytest.fixture
def small_preset(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], dict[str, Any]]:
    """``small_preset(name)``: the named preset's tree on a small, shared digits-av build."""
    cache = tmp_path_factory.getbasetemp() / "digits-av-small"
    return lambda name: shrink_to_small_digits(resolve_tree(name, registry), cache)
