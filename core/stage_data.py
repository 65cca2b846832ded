"""Per-stage modality settings: ``train.stages.<i>.data`` overrides ``data.<modality>`` for one
stage (``{video: {frames: 1}}`` then ``{video: {frames: 4}}``: a Frozen-in-Time curriculum).

The stream plan does not depend on the processors, so a stage with other settings decodes the
same samples in the same order, and a resumed stage rebuilds the same processors: exact resume
holds. Each overridden modality gets a processor built from its merged settings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from pydantic import ValidationError

from modaloom.core.data import pretrained_inputs
from modaloom.core.errors import SpecError
from modaloom.core.interfaces import DataContext, Processor, Source
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ExperimentSpec, Spec, StageSpec


def stage_settings(spec: ExperimentSpec, stage: StageSpec, index: int) -> dict[str, Spec]:
    """The merged settings of each modality the stage overrides.

    Raises:
        SpecError: at ``train.stages.<i>.data.<modality>[.<field>]``: an unknown modality or an
            invalid value.
    """
    merged: dict[str, Spec] = {}
    for name, override in stage.data.items():
        where = f"train.stages.{index}.data.{name}"
        base = spec.data.modality(name)
        if base is None:
            raise SpecError([(where, f"no modality {name!r} has settings under data")])
        try:
            merged[name] = type(base).model_validate({**base.model_dump(), **override})
        except ValidationError as exc:
            problems = [
                (".".join([where, *map(str, error["loc"])]), error["msg"]) for error in exc.errors()
            ]
            raise SpecError(problems) from None
    return merged


def check_stage_data(spec: ExperimentSpec) -> None:
    """Check every stage's overrides (before training starts).

    Raises:
        SpecError: the first stage with an invalid override.
    """
    for index, stage in enumerate(spec.train.resolved_stages()):
        stage_settings(spec, stage, index)


def stage_processors(
    spec: ExperimentSpec,
    stage: StageSpec,
    index: int,
    processors: Mapping[str, Processor],
    registry: Registry,
    sources: Mapping[str, Source],
    artifact_dir: Path,
) -> dict[str, Processor]:
    """The run's processors with those of the stage's overridden modalities rebuilt.

    Args:
        spec: the run's spec.
        stage: the stage.
        index: its position in ``train.stages``.
        processors: the run's processors, by modality.
        registry: the registry the spec was validated with.
        sources: the training sources (a text processor may read their captions).
        artifact_dir: the run's artifacts (a saved tokenizer is reused).
    """
    settings = stage_settings(spec, stage, index)
    if not settings:
        return dict(processors)

    def texts() -> Iterator[str]:
        for source in sources.values():
            yield from source.texts()

    pretrained = pretrained_inputs(spec.model, registry)
    ctx = DataContext(artifact_dir=artifact_dir, texts=texts, pretrained=pretrained)
    rebuilt = {name: registry.processor_factory(name)(s, ctx) for name, s in settings.items()}
    return {**processors, **rebuilt}
