"""Stage actions: ``component.action`` names a stage runs at its start (``vision.inflate``).

An action changes the online component; the momentum (EMA) copies that follow it get the same
action on their own weights (OmniVL's stage 2 inflates the momentum encoder too), so they do not
keep the old values until the EMA catches up.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from modaloom.core.compose import LoomModel
from modaloom.core.errors import SpecError
from modaloom.core.interfaces import Encoder
from modaloom.core.momentum import momentum_copies_of
from modaloom.core.spec_models import StageSpec


def with_momentum_copies(
    model: nn.Module, online: nn.Module, action: str, run: Callable[[], None]
) -> Callable[[], None]:
    """``run`` followed by the same action on every momentum copy of ``online``.

    A copy that is an `Encoder` with that action runs it on its own weights; any other copy
    takes the online module's values after the action (`MomentumCopy.reset`).
    """

    def apply() -> None:
        run()
        for owner, name in momentum_copies_of(model, online):
            copy = owner[name]
            actions = copy.stage_actions() if isinstance(copy, Encoder) else {}
            if action in actions:
                actions[action]()
            else:
                owner.reset([name])

    return apply


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
        online = model.components[component]
        resolved.append(with_momentum_copies(model, online, action, available[action]))
    return resolved
