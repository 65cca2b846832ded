"""A separate plugin package adds an encoder, an objective and a source; a spec uses all three."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
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


@pytest.fixture
def installed_extras(tmp_path: Path) -> Iterator[Path]:
    """loom_extras pip-installed into a temporary target directory put on sys.path (offline:
    no build isolation, no dependencies)."""
    source, target = tmp_path / "loom_extras", tmp_path / "site"
    shutil.copytree(PACKAGE, source)  # setuptools builds in the source tree
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--target", str(target), str(source)]
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield target
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("loom_extras", None)


def test_an_installed_package_is_found_through_its_entry_point(installed_extras: Path) -> None:
    assert "loom_extras" not in sys.modules
    registry = load_plugins(entry_points=True)
    assert registry.get("encoder", "pixel_mlp").plugin == "loom_extras"
    assert registry.get("source", "color_squares").plugin == "loom_extras"
    assert Path(sys.modules["loom_extras"].__file__ or "").parent == installed_extras


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
