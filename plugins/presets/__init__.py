"""Built-in presets: every YAML file in this folder (plugins/presets/) is a named spec."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from modaloom.core.hookspecs import hookimpl
from modaloom.core.registry import Registry
from modaloom.core.spec_yaml import read_spec_file

PRESET_DIR = Path(__file__).parent


def read_preset(path: Path) -> dict[str, Any]:
    """Parse one preset file as strictly as a user's spec (no duplicate keys: `read_spec_file`)."""
    return read_spec_file(path)


def register_preset_dir(registry: Registry, directory: Path) -> None:
    """Register each ``*.yaml`` in ``directory`` under its file stem (third parties reuse this)."""
    for path in sorted(directory.glob("*.yaml")):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        description = first.lstrip("# ").strip() if first.startswith("#") else ""
        registry.add_preset(
            path.stem,
            partial(read_preset, path),
            description=description,
            path=str(path),
        )


@hookimpl
def modaloom_register_presets(registry: Registry) -> None:
    """Register the shipped presets."""
    register_preset_dir(registry, PRESET_DIR)
