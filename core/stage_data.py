"""What a stage reads: its sources, its stream plan and its processors.

``train.stages.<i>.data`` overrides ``data.<modality>`` for one stage (``{video: {frames: 1}}``
then ``{video: {frames: 4}}``: a Frozen-in-Time curriculum); each overridden modality gets a
processor built from its merged settings. The stream plan does not depend on the processors,
so such a stage decodes the same samples in the same order, and a resumed stage rebuilds the
same processors: exact resume holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from pydantic import ValidationError

from modaloom.core.data import SampleDecoder, pretrained_inputs
from modaloom.core.errors import SpecError
from modaloom.core.interfaces import DataContext, Processor, Source
from modaloom.core.portable import portable_model
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ExperimentSpec, Spec, StageSpec
from modaloom.core.stream import StreamPlan, TrainStream, split_sources


def plan_stage(
    spec: ExperimentSpec,
    sources: Mapping[str, Source],
    world: int,
    where: tuple[int, StageSpec, int],
    data_state: Mapping[str, Any],
) -> tuple[list[Source], StreamPlan]:
    """A stage's sources and its stream plan, at the saved position when resuming.

    Args:
        spec: the run's spec.
        sources: the training sources by name.
        world: the number of processes.
        where: (stage index, stage, optimizer steps of it done).
        data_state: the saved data position (``{"stage": name, ...}``), or empty.
    """
    index, stage, done = where
    names = stage.sources or list(spec.data.sources)
    chosen = [sources[name] for name in names]
    workers = max(1, spec.data.num_workers)
    plan = StreamPlan(
        names=names,
        weights=[spec.data.sources[n].weight for n in names],
        lengths=[len(s) if s.is_map_style else None for s in chosen],
        seed=spec.train.seed * 1000 + index,
        batch_size=spec.data.batch_size,
        mixing=spec.data.mixing,
        group=world,
        world=world,
        workers=workers,
        split=split_sources(chosen, world * workers),
    )
    if data_state.get("stage") == stage.name:
        plan.load_state(data_state)
    else:
        for _ in range(done * spec.train.gradient_accumulation * world):  # replay the plan
            plan.next_micro_batch()
    return chosen, plan


def stage_stream(
    spec: ExperimentSpec,
    stage: StageSpec,
    processors: Mapping[str, Processor],
    sources: list[Source],
    plan: StreamPlan,
    accelerator: Accelerator,
) -> TrainStream:
    """This rank's training stream of a stage, decoded by ``processors``."""
    data = spec.data
    decoder = SampleDecoder(processors, True, data.on_error, data.cache_media)
    return TrainStream(
        sources,
        plan,
        decoder,
        stop=stage.steps * spec.train.gradient_accumulation,
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )


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

    pretrained = pretrained_inputs(portable_model(spec.model, artifact_dir), registry)
    ctx = DataContext(artifact_dir=artifact_dir, texts=texts, pretrained=pretrained)
    rebuilt = {name: registry.processor_factory(name)(s, ctx) for name, s in settings.items()}
    return {**processors, **rebuilt}
