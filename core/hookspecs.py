"""Hook specifications: one ``modaloom_register_<kind>(registry)`` hook per kind of component.

A plugin module implements any of these with ``@modaloom.hookimpl`` and calls ``registry.add``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from modaloom.core.registry import Registry

PROJECT = "modaloom"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def modaloom_register_modalities(registry: Registry) -> None:
    """Register modalities (processors) and their encoders and decoders."""


@hookspec
def modaloom_register_objectives(registry: Registry) -> None:
    """Register objectives (losses with their heads) and the visual tokenizers that give masked
    image modelling its targets (``registry.add_visual_tokenizer``)."""


@hookspec
def modaloom_register_sources(registry: Registry) -> None:
    """Register data sources."""


@hookspec
def modaloom_register_evaluators(registry: Registry) -> None:
    """Register evaluators (retrieval, captioning, QA, zero-shot, ...)."""


@hookspec
def modaloom_register_presets(registry: Registry) -> None:
    """Register named specs (YAML files or dicts)."""


@hookspec
def modaloom_register_trackers(registry: Registry) -> None:
    """Register experiment trackers (``registry.add_tracker``) that ``train.log_with`` names."""


@hookspec
def modaloom_register_converters(registry: Registry) -> None:
    """Register ``modaloom data convert`` formats (``registry.add_converter``)."""
