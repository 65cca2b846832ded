"""A separate plugin package adds an encoder, an objective and a source; a spec uses all three."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from modaloom.core.plugins import load_plugins
from modaloom.core.runner import train
from modaloom.core.spec import load_spec

PACKAGE = Path(__file__).parent / "loom_extras"

SPEC = {
    "model": {
        "components": {
            "vision": {"type": "pixel_mlp", "hidden": 32},
            "text": {
                "type": "bert",
                "config": {
                    "hidden_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 64,
                },
            },
        },
        "objectives": [{"type": "cosine_align", "a": "vision", "b": "text"}],
    },
    "data": {
        "sources": {"squares": {"type": "color_squares", "size": 24}},
        "batch_size": 8,
        "image": {"size": 32},
        "text": {"vocab_size": 100, "max_length": 8},
    },
    "train": {"steps": 6, "log_every": 2, "optimizer": {"lr": 0.003}},
}


@pytest.fixture
def extras_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(PACKAGE))
    try:
        yield importlib.import_module("loom_extras")
    finally:
        sys.path.remove(str(PACKAGE))
        sys.modules.pop("loom_extras", None)


def test_fixture_package_declares_the_entry_point() -> None:
    text = (PACKAGE / "pyproject.toml").read_text()
    assert '[project.entry-points.modaloom]\nloom_extras = "loom_extras"' in text


def test_third_party_components_train_without_touching_modaloom(extras_module, tmp_path) -> None:  # type: ignore[no-untyped-def]
    registry = load_plugins(entry_points=False, extra=[extras_module])
    for kind, name in [
        ("encoder", "pixel_mlp"),
        ("objective", "cosine_align"),
        ("source", "color_squares"),
    ]:
        assert registry.get(kind, name).plugin == "loom_extras"
    spec = load_spec(SPEC, registry=registry)
    result = train(spec, tmp_path, registry=registry, show_progress=False)
    assert result.step == 6
    losses = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and '"cosine_align/align_loss"' in losses[0]


def test_builtin_registry_does_not_know_the_fixture(registry) -> None:  # type: ignore[no-untyped-def]
    assert "pixel_mlp" not in registry.names("encoder")
