"""Every preset validates; each tiny preset trains and evaluates on a small digits-av build."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modaloom
from modaloom.core.data import build_sources
from modaloom.core.evaluation import run_evaluators
from modaloom.core.inference import load_run
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec

SmallPreset = Callable[[str], dict[str, Any]]

TINY = ("valor-tiny", "omnivl-tiny", "cots-tiny")


def test_every_preset_validates(registry: Registry) -> None:
    names = registry.names("preset")
    assert {"valor", "omnivl", "cots", *TINY} <= set(names)
    for name in names:
        if name != "clip-tiny":  # needs a manifest path
            load_spec(name, registry=registry)


@pytest.mark.parametrize("preset", TINY)
def test_tiny_preset_trains_and_evaluates(
    preset: str, registry: Registry, tmp_path: Path, small_preset: SmallPreset
) -> None:
    spec = load_spec(small_preset(preset), registry=registry)
    result = train(spec, tmp_path, registry=registry, show_progress=False)
    assert result.step == sum(s.steps for s in spec.train.resolved_stages())
    assert math.isfinite(result.last_loss)
    run = load_run(tmp_path, spec=spec, registry=registry)
    metrics = run_evaluators(spec, run.model, run.processors, run.sources, registry, run.device)
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    for key, value in metrics.items():
        if key.rsplit(".", 1)[-1] in {"r1", "r5", "r10", "accuracy"}:
            assert 0.0 <= value <= 1.0, key


def test_pipeline_captions_and_answers(
    registry: Registry, tmp_path: Path, small_preset: SmallPreset
) -> None:
    spec = load_spec(small_preset("valor-tiny"), registry=registry)
    train(spec, tmp_path, registry=registry, show_progress=False)
    pipeline = modaloom.load(tmp_path)
    sample = build_sources(spec.data.eval_sources, registry)["test"][0]
    media = {"video": [sample["video"]] * 2, "audio": [sample["audio"]] * 2}
    captions = pipeline.caption(media, num_beams=2, max_length=6)
    answers = pipeline.answer(media, ["which digit is shown?", "which tone plays?"])
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert captions[0] == captions[1]  # same clip, same caption
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    scores = pipeline.score(
        ["a one is shown while a tone for two plays"], [sample["video"]], modality="video"
    )
    assert scores.shape == (1, 1)
