"""Stage actions: ``component.action`` names a stage runs at its start (``vision.inflate``)."""

from __future__ import annotations

from collections.abc import Callable

from modaloom.core.compose import LoomModel
from modaloom.core.errors import SpecError
from modaloom.core.interfaces import Encoder
from modaloom.core.spec_models import StageSpec


def stage_actions(model: LoomModel, stage: StageSpec, index: int) -> list[Callable[[], None]]:
    """Resolve a stage's ``component.action`` names, with a spec error for unknown ones."""
    resolved = []
    for number, name in enumerate(stage.actions):
        component, _, action = name.partition(".")
        available: dict[str, Callable[[], None]] = {}
        if component in model.components:
            module = model.components[component]
            available = module.stage_actions() if isinstance(module, Encoder) else {}
        if action not in available:
            listing = ", ".join(
                f"{c}.{a}"
                for c, m in model.components.items()
                if isinstance(m, Encoder)
                for a in m.stage_actions()
            )
            raise SpecError(
                [
                    (
                        f"train.stages.{index}.actions.{number}",
                        f"unknown action {name!r}; available: {listing or '(none)'}",
                    )
                ]
            )
        resolved.append(available[action])
    return resolved
