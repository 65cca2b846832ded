"""Per-stage modality settings (``train.stages.<i>.data``): a frame-count curriculum."""

from __future__ import annotations

import pytest

from modaloom.core.cli import main
from modaloom.core.data import build_processors
from modaloom.core.errors import SpecError
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.core.stage_data import check_stage_data, stage_processors


def test_a_stage_decodes_with_its_own_frame_count(registry: Registry, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = load_spec("omnivl-tiny", ["train.stages.0.data={video: {frames: 1}}"], registry)
    processors = build_processors(spec.data, registry, {}, None)
    first = stage_processors(spec, spec.train.stages[0], 0, processors, registry, {}, tmp_path)
    second = stage_processors(spec, spec.train.stages[1], 1, processors, registry, {}, tmp_path)
    assert first["video"].config.frames == 1 and first["video"].config.size == 32  # type: ignore[attr-defined]
    assert second["video"] is processors["video"] and processors["video"].config.frames == 4  # type: ignore[attr-defined]
    assert first["text"] is processors["text"]


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        (
            "{video: {frames: 0}}",
            "train.stages.1.data.video.frames: Input should be greater than or equal to 1",
        ),
        (
            "{smell: {strength: 2}}",
            "train.stages.1.data.smell: no modality 'smell' has settings under data",
        ),
    ],
)
def test_invalid_stage_settings_are_refused(
    registry: Registry, override: str, problem: str
) -> None:
    spec = load_spec("omnivl-tiny", [f"train.stages.1.data={override}"], registry)
    with pytest.raises(SpecError) as caught:
        check_stage_data(spec)
    assert str(caught.value) == f"spec is invalid (1 problem):\n  {problem}"


def test_validate_refuses_an_invalid_stage_setting(capsys: pytest.CaptureFixture[str]) -> None:
    """`modaloom validate` finds what training would refuse at the stage's start (exit 2)."""
    override = "train.stages.1.data={video: {framez: 3}}"
    assert main(["validate", "omnivl-tiny", "--set", override]) == 2
    assert capsys.readouterr().err == (
        "error: omnivl-tiny is invalid (1 problem):\n"
        "  train.stages.1.data.video.framez: Extra inputs are not permitted\n"
    )
