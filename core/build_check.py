"""Building a spec on the meta device, so that "the spec is valid" means "the model builds".

`load_spec` checks fields, the components' `transformers` configs and every cross-reference;
what only a build finds (a size derived from the data that a config cannot use, a decoder that
cannot share with its target, a stage action the component type lacks) `check_build` finds by
building: the processors (a text tokenizer trained on no text), then every component, objective
and stage action on PyTorch's ``meta`` device, which allocates no memory and reads no data.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from modaloom.core.compose import build_model, building
from modaloom.core.data import build_processors
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ExperimentSpec
from modaloom.core.stage_actions import stage_actions
from modaloom.core.tracking import check_trackers


class BuildCheck(NamedTuple):
    """What `check_build` did.

    Attributes:
        built: whether the model was built (not when a component loads a checkpoint: its
            weights are read when training starts).
        skipped: the components that load a checkpoint.
    """

    built: bool
    skipped: tuple[str, ...]


def check_build(spec: ExperimentSpec, registry: Registry) -> BuildCheck:
    """Build ``spec``'s processors, model, stage actions and evaluators without data or memory.

    Args:
        spec: a spec from `load_spec`.
        registry: the registry it was validated against.

    Returns:
        Whether the model was built. (A text tokenizer trained on no text has fewer tokens than
        the real one, so the built model's size is not the trained model's.)

    Raises:
        SpecError: located at the entry that cannot be built (``model.components.vision``,
            ``train.stages.1.actions.0``, ``eval.2``), or at a tracker that is unknown or not
            installed (``train.log_with.0``).
    """
    check_trackers(spec.train, registry)
    pretrained = tuple(
        name
        for name, component in spec.model.components.items()
        if getattr(component, "pretrained", None) is not None
    )
    if pretrained:  # `from_pretrained` refuses the meta device: it exists to read weights
        return BuildCheck(False, pretrained)
    with building("data"):
        processors = build_processors(spec.data, registry, {}, None)
    with torch.device("meta"):
        model = build_model(spec.model, registry, processors)
        for index, stage in enumerate(spec.train.resolved_stages()):
            for action in stage_actions(model, stage, index):
                with building(f"train.stages.{index}.actions"):
                    action()
    for index, evaluator in enumerate(spec.eval):
        with building(f"eval.{index}"):
            registry.evaluator_factory(evaluator.type)(evaluator)
    return BuildCheck(True, ())
