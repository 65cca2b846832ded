"""Runs travel: what a run keeps so that rebuilding it never reads its ``pretrained:``
checkpoints or its tokenizer directory again.

When training starts, each component that starts from a checkpoint (``pretrained``) gets
``artifacts/components/<name>/`` in the run: the configuration that rebuilds its architecture
as built (``config.json``, written by the component's ``save_config``), a copy of the
checkpoint's ``preprocessor_config.json`` (from which the processors take what the data spec
leaves unset: pixel mean, std and size, AST's spectrogram settings) and `RECORD_FILE` (which
component, and the checkpoint it came from). ``artifacts/sources.json``
lists the outside paths the run took (``pretrained`` values, ``data.text.tokenizer``); the
tokenizer itself is kept in ``artifacts/tokenizer``.

Rebuilding the run (`modaloom.load`, ``modaloom eval``, ``--resume``) validates the spec with
those paths allowed to be gone (`provided_values`, passed to `load_spec`), builds each such
component from its kept configuration (`portable_model`: ``pretrained`` points at the kept
directory, which holds no weights, so the component starts from a random init and no partial
load is refused) and then loads the checkpoint's weights over the whole model.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import try_to_load_from_cache
from torch import nn

from modaloom.core.errors import ExportError
from modaloom.core.spec_models import ExperimentSpec, ModelSpec

__all__ = [
    "COMPONENTS_DIR",
    "RECORD_FILE",
    "SOURCES_FILE",
    "is_kept_component",
    "kept_components",
    "portable_model",
    "provided_by",
    "provided_values",
    "save_components",
]

log = logging.getLogger(__name__)

COMPONENTS_DIR = "components"
"""Under a run's ``artifacts/``: one directory per component kept for rebuilding."""
RECORD_FILE = "modaloom-component.json"
"""In a kept component's directory: ``{"component", "type", "pretrained"}``; marks a directory
that holds a configuration without weights."""
PREPROCESSOR_FILES = ("preprocessor_config.json",)
"""A checkpoint's files that the processors read (kept beside the configuration)."""
SOURCES_FILE = "sources.json"
"""Under ``artifacts/``: ``{"pretrained": {component: value}, "tokenizer": value or null}``."""


def is_kept_component(path: str | Path) -> bool:
    """Whether ``path`` is a component directory a run kept (a configuration, no weights)."""
    try:
        return (Path(path) / RECORD_FILE).is_file()
    except (OSError, ValueError):  # a model name no file can have
        return False


def save_components(
    spec: ExperimentSpec,
    components: Mapping[str, nn.Module],
    artifacts: Path,
) -> None:
    """Keep, under ``artifacts``, what rebuilds each ``pretrained`` component without its
    checkpoint, and ``sources.json`` (see the module docstring).

    A component that cannot save its configuration is logged once at WARNING: rebuilding the
    run will read its checkpoint again.

    Args:
        spec: the run's spec.
        components: the built components by name (`LoomModel.components`).
        artifacts: the run's ``artifacts/`` directory.
    """
    pretrained: dict[str, str] = {}
    for name, component_spec in spec.model.components.items():
        checkpoint = getattr(component_spec, "pretrained", None)
        if not isinstance(checkpoint, str) or is_kept_component(checkpoint):
            continue
        directory = artifacts / COMPONENTS_DIR / name
        try:
            _save_config(components[name], directory)
        except ExportError as exc:
            log.warning(
                "model.components.%s: %s; rebuilding this run will read %r again",
                name,
                exc,
                checkpoint,
            )
            continue
        for file in PREPROCESSOR_FILES:
            found = checkpoint_file(checkpoint, file)
            if found is not None:
                shutil.copyfile(found, directory / file)
        record = {"component": name, "type": component_spec.type, "pretrained": checkpoint}
        (directory / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        pretrained[name] = checkpoint
    text = spec.data.modality("text")
    tokenizer = getattr(text, "tokenizer", None) if text is not None else None
    if pretrained or tokenizer is not None:
        sources = {"pretrained": pretrained, "tokenizer": tokenizer}
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / SOURCES_FILE).write_text(json.dumps(sources, indent=2) + "\n")


def checkpoint_file(checkpoint: str, name: str) -> Path | None:
    """File ``name`` of a checkpoint directory or of a model in the Hugging Face cache."""
    local = Path(checkpoint).expanduser() / name
    if local.is_file():
        return local
    try:
        found = try_to_load_from_cache(checkpoint, name)
    except ValueError:  # not a valid model name
        return None
    return Path(found) if isinstance(found, str) else None


def _save_config(module: nn.Module, directory: Path) -> None:
    """``module.save_config(directory)``; `ExportError` when it has none."""
    save = getattr(module, "save_config", None)
    if save is None:
        raise ExportError(f"{type(module).__name__} cannot save its configuration")
    directory.mkdir(parents=True, exist_ok=True)
    save(directory)


def kept_components(artifacts: Path) -> dict[str, Path]:
    """The component directories a run kept, by component name."""
    root = artifacts / COMPONENTS_DIR
    if not root.is_dir():
        return {}
    return {path.name: path for path in sorted(root.iterdir()) if is_kept_component(path)}


def provided_values(artifacts: Path) -> frozenset[str]:
    """The outside paths a run took and kept (``pretrained`` values, the tokenizer directory):
    a spec rebuilding the run may name them after they are gone.

    Args:
        artifacts: the run's ``artifacts/`` directory.
    """
    try:
        sources: Any = json.loads((artifacts / SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return frozenset()
    if not isinstance(sources, dict):
        return frozenset()
    kept = kept_components(artifacts)
    pretrained = sources.get("pretrained") or {}
    values = {str(v) for name, v in pretrained.items() if name in kept}
    tokenizer = sources.get("tokenizer")
    if isinstance(tokenizer, str) and (artifacts / "tokenizer").is_dir():
        values.add(tokenizer)
    return frozenset(values)


def provided_by(path: str | Path) -> frozenset[str]:
    """`provided_values` of the run at ``path``: a run directory, a ``checkpoints/step-N``
    directory of one, or a directory ``modaloom export`` wrote."""
    path = Path(path)
    for run in (path, path.parent.parent):
        if (run / "artifacts").is_dir():
            return provided_values(run / "artifacts")
    return frozenset()


def _read_record(directory: Path) -> dict[str, Any]:
    """A kept component's `RECORD_FILE` (``{}`` when unreadable)."""
    try:
        record = json.loads((directory / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def portable_model(model_spec: ModelSpec, artifacts: Path) -> ModelSpec:
    """``model_spec`` with each ``pretrained`` component the run kept pointing at its kept
    configuration (weights come from the run's checkpoint, loaded afterwards).

    Args:
        model_spec: the spec's ``model``.
        artifacts: the run's ``artifacts/`` directory.
    """
    kept = kept_components(artifacts)
    updates = {}
    for name, spec in model_spec.components.items():
        if name not in kept or getattr(spec, "pretrained", None) is None:
            continue
        record = _read_record(kept[name])
        if record.get("type") != spec.type:  # another component now: not what was kept
            log.warning(
                "model.components.%s is a %r, but the run kept a %r: built from its pretrained",
                name,
                spec.type,
                record.get("type"),
            )
            continue
        updates[name] = spec.model_copy(update={"pretrained": str(kept[name])})
        log.info("model.components.%s: built from %s (weights follow)", name, kept[name])
    if not updates:
        return model_spec
    return model_spec.model_copy(update={"components": {**model_spec.components, **updates}})
