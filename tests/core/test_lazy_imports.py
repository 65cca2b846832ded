"""A run imports what its spec uses: unused encoders' `transformers` modules, PyAV, scikit-learn
and matplotlib load only when something that needs them runs (each case in a fresh interpreter,
since this one has imported everything already)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

AST = "transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer"
CLIP = "transformers.models.clip.modeling_clip"
TIMESFORMER = "transformers.models.timesformer.modeling_timesformer"
VIT = "transformers.models.vit.modeling_vit"
BERT = "transformers.models.bert.modeling_bert"
UNUSED_BY_CLIP_TINY = (AST, CLIP, TIMESFORMER, "sklearn", "matplotlib", "av")
"""Modules a ViT + BERT image-text run has no use for."""

CLI = """
import json, sys
from modaloom.core.cli import main
code = main(sys.argv[1:])
print(json.dumps([code, sorted(sys.modules)]))
"""


def run_python(script: str, *args: str, cwd: Path) -> Any:
    """Run ``script`` in a fresh interpreter; the JSON it prints on its last line."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` (modules or packages) that ``modules`` holds."""
    return [name for name in names if any(m == name or m.startswith(name + ".") for m in modules)]


@pytest.mark.parametrize("command", ["validate", "train"])
def test_clip_tiny_imports_only_what_it_uses(
    command: str, shapes_manifest: Path, tmp_path: Path
) -> None:
    args = ["clip-tiny", "--set", f"data.sources.train.path={shapes_manifest}"]
    if command == "train":
        args += ["--set", "train.steps=1", "--output", str(tmp_path / "run"), "--no-progress"]
    code, modules = run_python(CLI, command, *args, cwd=tmp_path)
    assert code == 0
    assert loaded(modules, UNUSED_BY_CLIP_TINY) == []
    assert loaded(modules, (VIT, BERT)) == [VIT, BERT]  # the model was built


def test_ast_model_is_imported_when_an_ast_encoder_is_built(tmp_path: Path) -> None:
    script = f"""
import json, sys
from modaloom.core.compose import BuildContext
from modaloom.core.plugins import load_plugins
from modaloom.tests.tiny import TINY_AST
registry = load_plugins(entry_points=False)
entry = registry.get("encoder", "ast")
spec = entry.config.model_validate({{"type": "ast", "config": TINY_AST}})
before = {AST!r} in sys.modules
encoder = entry.factory(spec, BuildContext(registry))
print(json.dumps([before, {AST!r} in sys.modules, type(encoder).__name__]))
"""
    assert run_python(script, cwd=tmp_path) == [False, True, "ASTEncoder"]


def test_pyav_is_imported_when_a_video_is_decoded(tmp_path: Path) -> None:
    script = """
import json, random, sys
from modaloom.core.errors import MediaDecodeError
from modaloom.core.plugins import load_plugins
from modaloom.modalities.video import VideoProcessor, VideoSpec
load_plugins(entry_points=False)
processor = VideoProcessor(VideoSpec(frames=2, size=32))
before = "av" in sys.modules
try:
    processor.process(b"not a video", key="k", train=False, rng=random.Random(0))
except MediaDecodeError as exc:
    error = str(exc)
print(json.dumps([before, "av" in sys.modules, error]))
"""
    before, after, error = run_python(script, cwd=tmp_path)
    assert (before, after) == (False, True)
    assert error == (
        "cannot decode sample 'k': unreadable or unknown container "
        "(Invalid data found when processing input)"
    )
