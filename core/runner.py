"""The one training loop: Accelerate, stages, accumulation, clipping, checkpoints, resume."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, send_to_device, set_seed
from tqdm.auto import tqdm

from modaloom.core import checkpoint as ckpt
from modaloom.core import fsdp, portable, run_dir, run_metrics, run_state, tracking
from modaloom.core.compose import LoomModel, build_model
from modaloom.core.data import build_processors, build_sources
from modaloom.core.errors import ModaloomError
from modaloom.core.init_from import InitReport, InitSource, apply_init_from, resolve_source
from modaloom.core.interfaces import Batch, Processor, Source
from modaloom.core.optim import make_optimizer, make_scheduler
from modaloom.core.optimizer_step import OptimizerStep
from modaloom.core.process_group import prepare_to_join
from modaloom.core.registry import Registry
from modaloom.core.run_dir import ARTIFACTS_DIR, CHECKPOINTS_DIR, METRICS_FILE
from modaloom.core.spec import spec_to_tree
from modaloom.core.spec_models import ExperimentSpec, StageSpec
from modaloom.core.stage_actions import stage_actions
from modaloom.core.stage_data import (
    check_stage_data,
    plan_stage,
    stage_processors,
    stage_stream,
)
from modaloom.core.stream import StreamPlan, make_train_loader

log = logging.getLogger(__name__)

METADATA_KEYS = ("__keys__", "__meta__")
"""Batch entries that hold no tensors (keys, raw fields), left as they are by `send_to_device`
(walking a batch's per-sample dicts took ~0.2 ms a step)."""


@dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        output_dir: the run directory.
        step: optimizer steps completed.
        last_loss: the loss of the last step (mean over ranks).
        checkpoint: the last checkpoint written.
        skipped_samples: corrupt samples skipped on this rank.
        is_main_process: whether this process is rank 0 (only it prints).
    """

    output_dir: Path
    step: int
    last_loss: float
    checkpoint: Path | None
    skipped_samples: int = 0
    is_main_process: bool = True


def make_accelerator(precision: str, accumulation: int, **trackers: Any) -> Accelerator:
    """An `Accelerator` on CUDA when present, else CPU (gloo under torchrun).

    FSDP or DeepSpeed come from Accelerate's own configuration (its environment variables);
    a warning says when Accelerate ignored them (it does on CPU). ``trackers``: the trackers
    (`modaloom.core.tracking.accelerator_kwargs`).
    """
    cuda = torch.cuda.is_available()
    if precision == "fp16" and not cuda:
        raise ModaloomError("train.precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]
    prepare_to_join()
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision=mixed,
        gradient_accumulation_steps=accumulation,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        **trackers,
    )
    fsdp.check_strategy(accelerator)
    return accelerator


@dataclass
class TrainingSession:
    """Everything one run holds; `run` trains the remaining stages."""

    spec: ExperimentSpec
    output_dir: Path
    accelerator: Accelerator
    sources: dict[str, Source]
    processors: dict[str, Processor]
    model: LoomModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    show_progress: bool = True
    shared: list[list[str]] = field(default_factory=list)
    registry: Registry | None = None
    eval_sources: dict[str, Source] = field(default_factory=dict)
    """Sources the spec's evaluators read during training (``train.eval_every``)."""
    last_evaluation: tuple[int, dict[str, float]] = (-1, {})
    step: int = 0
    data_state: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    last_checkpoint: Path | None = None
    init_report: InitReport | None = None
    """What ``train.init_from`` loaded (a fresh fine-tuning run)."""
    grad_norm: torch.Tensor | None = None
    """Global gradient norm of the last optimizer step, before clipping."""

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / CHECKPOINTS_DIR

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    @cached_property
    def optimizer_step(self) -> OptimizerStep:
        """Clip, step the optimizer and the scheduler, zero the gradients."""
        return OptimizerStep(self.accelerator, self.optimizer, self.scheduler)

    @property
    def unwrapped(self) -> LoomModel:
        return self.accelerator.unwrap_model(self.model)  # type: ignore[no-any-return]

    def resume(self, checkpoint: Path) -> None:
        """Load ``checkpoint`` and check that its data position can be restored.

        Raises:
            CheckpointError: the checkpoint does not fit this run.
            DataError: the data stream cannot continue from the saved position.
        """
        run_state.restore(self, checkpoint)
        first = 0
        for index, stage in enumerate(self.spec.train.resolved_stages()):
            if self.step < first + stage.steps:
                if self.data_state.get("stage") == stage.name:
                    self.stage_plan(index, stage, self.step - first)  # raises if it cannot
                return
            first += stage.steps

    def save_checkpoint(self) -> None:
        """Write a checkpoint of this step (every rank takes part)."""
        run_state.save(self)

    # ------------------------------------------------------------------ loop

    def run(self) -> TrainResult:
        """Train every stage that is not finished yet; checkpoint at the end."""
        stages = self.spec.train.resolved_stages()
        total = sum(stage.steps for stage in stages)
        bar = tqdm(
            total=total,
            initial=self.step,
            desc="train",
            dynamic_ncols=True,
            disable=not (self.show_progress and self.accelerator.is_main_process),
        )
        last_loss, first_step = float("nan"), 0
        for index, stage in enumerate(stages):
            if self.step < first_step + stage.steps:
                last_loss = self.run_stage(index, stage, first_step, bar)
            first_step += stage.steps
        bar.close()
        if self.spec.train.eval_every is not None:
            run_metrics.write_final_metrics(self, stages[-1].name)
        if (
            self.last_checkpoint is None
            or ckpt.checkpoint_name(self.step) != self.last_checkpoint.name
        ):
            self.save_checkpoint()
        return TrainResult(
            self.output_dir,
            self.step,
            last_loss,
            self.last_checkpoint,
            self.skipped,
            self.accelerator.is_main_process,
        )

    def stage_plan(
        self, index: int, stage: StageSpec, done: int
    ) -> tuple[list[Source], StreamPlan]:
        """The stage's sources and its stream plan, at the saved position when resuming."""
        world = self.accelerator.num_processes
        return plan_stage(self.spec, self.sources, world, (index, stage, done), self.data_state)

    def run_stage(self, index: int, stage: StageSpec, first_step: int, bar: tqdm) -> float:
        """Train one stage from the current step to its end; returns the last loss."""
        train, acc = self.spec.train, self.accelerator
        done = self.step - first_step
        if done == 0:
            for action in stage_actions(self.unwrapped, stage, index):
                action()
        sources, plan = self.stage_plan(index, stage, done)
        tracker = plan.copy()
        processors = self.processors
        if stage.data:
            assert self.registry is not None
            artifacts = self.output_dir / ARTIFACTS_DIR
            processors = stage_processors(
                self.spec, stage, index, processors, self.registry, self.sources, artifacts
            )
        stream = stage_stream(self.spec, stage, processors, sources, plan, acc)
        loader = make_train_loader(stream, self.spec.data.num_workers, seed=train.seed + index)
        self.model.train()
        unwrapped = self.unwrapped  # once: Accelerate's unwrap_model costs ~0.2 ms a call
        parameters = list(self.model.parameters())  # once: walking the modules costs ~0.2 ms
        step_loss, micro, last = torch.zeros(()), 0, float("nan")
        started = time.perf_counter()
        for batch in loader:
            self.note_skipped(batch)
            terms, loss = self.micro_step(batch, parameters)
            step_loss += loss.detach().float().cpu() / train.gradient_accumulation
            micro += 1
            for _ in range(acc.num_processes):
                tracker.next_micro_batch()
            if micro % train.gradient_accumulation:
                continue
            self.step += 1
            unwrapped.after_optimizer_step()
            self.data_state = {"stage": stage.name, **tracker.state_dict()}
            bar.update(1)
            if self.step % train.log_every == 0 or self.step == first_step + stage.steps:
                last = run_metrics.log_step(self, stage.name, step_loss, terms, started, bar)
            if train.eval_every is not None and self.step % train.eval_every == 0:
                run_metrics.evaluate(self, stage.name)
            if self.step % train.checkpoint_every == 0:
                self.save_checkpoint()
            step_loss = torch.zeros(())
        return last

    def micro_step(
        self, batch: Batch, parameters: list[torch.nn.Parameter]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Forward and backward of one micro-batch; the optimizer steps on the last one.

        Args:
            batch: the micro-batch, as the loader gives it.
            parameters: the model's parameters, whose gradients are clipped.
        """
        acc, train = self.accelerator, self.spec.train
        batch = send_to_device(batch, acc.device, skip_keys=list(METADATA_KEYS))
        source = self.spec.data.sources.get(batch.get("__source__", ""))
        if source is not None and source.objectives is not None:
            batch["__objectives__"] = source.objectives
        with acc.accumulate(self.model):
            with acc.autocast():
                output = self.model(batch)
            # copies, not views: a term such as a temperature may share a parameter's storage,
            # which the optimizer step below changes in place before the terms are logged
            terms = {name: value.detach().clone() for name, value in output.terms.items()}
            acc.backward(output.loss)
            if acc.sync_gradients:
                self.grad_norm = self.optimizer_step(parameters, train.max_grad_norm)
        return terms, output.loss

    def note_skipped(self, batch: Batch) -> None:
        """Log and count the corrupt samples the loader dropped from this batch."""
        for key, reason in batch.pop("__skipped__", []):
            log.warning("skipped sample %s: %s", key, reason)
            self.skipped += 1


def setup_session(
    spec: ExperimentSpec,
    output_dir: Path,
    registry: Registry,
    show_progress: bool = True,
    accelerator: Accelerator | None = None,
    save_artifacts: bool = True,
    init: InitSource | None = None,
) -> TrainingSession:
    """Build accelerator, data, model and optimizer for ``spec`` (no resume yet).

    Nothing is written into ``output_dir`` but, with ``save_artifacts``, what the processors
    learned (a trained tokenizer) under ``artifacts/``. With ``init`` (``train.init_from``),
    the model starts from that checkpoint's weights, and from its run's tokenizer when the
    source offers one (`InitSource.artifacts`).
    """
    train = spec.train
    if accelerator is None:
        accelerator = make_accelerator(train.precision, train.gradient_accumulation)
    if train.eval_every is not None and fsdp.is_fsdp(accelerator):
        raise ModaloomError(
            "train.eval_every is not supported under FSDP (ranks evaluate different numbers of "
            "batches, and a sharded model needs every rank in each forward pass); remove it "
            "and run `modaloom eval` on the checkpoints"
        )
    set_seed(train.seed)
    sources = build_sources(spec.data.sources, registry)
    eval_sources = build_sources(spec.data.eval_sources, registry) if train.eval_every else {}
    artifacts = output_dir / ARTIFACTS_DIR
    # a resumed run rebuilds its pretrained components from what it kept, never the checkpoints
    model_spec = spec.model if save_artifacts else portable.portable_model(spec.model, artifacts)
    with accelerator.main_process_first():
        saved = init.artifacts if init is not None and init.artifacts is not None else artifacts
        processors = build_processors(spec.data, registry, sources, saved, model_spec)
        if accelerator.is_main_process and save_artifacts:
            artifacts.mkdir(parents=True, exist_ok=True)
            for processor in processors.values():
                processor.save(artifacts)
    set_seed(train.seed)  # model init does not depend on how the tokenizer was obtained
    model = build_model(model_spec, registry, processors)
    if accelerator.is_main_process and save_artifacts:
        portable.save_components(spec, model.components, artifacts)
    for index, stage in enumerate(train.resolved_stages()):
        stage_actions(model, stage, index)  # unknown actions fail before training starts
    check_stage_data(spec)
    report = None if init is None else apply_init_from(model, init)
    optimizer = make_optimizer(model, train.optimizer)
    total = sum(stage.steps for stage in train.resolved_stages())
    scheduler = make_scheduler(optimizer, total, train.scheduler)
    shared = ckpt.shared_names(model)  # before sharding renames or splits the tensors
    replicated = fsdp.replicate_scalar_parameters(accelerator, model)
    model, optimizer = accelerator.prepare(model, optimizer)
    fsdp.average_replicated_gradients(model, replicated)
    return TrainingSession(
        spec,
        output_dir,
        accelerator,
        sources,
        processors,
        model,
        optimizer,
        scheduler,
        show_progress,
        shared,
        registry,
        eval_sources,
        init_report=report,
    )


def train(
    spec: ExperimentSpec,
    output_dir: str | Path,
    *,
    registry: Registry | None = None,
    resume: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> TrainResult:
    """Train ``spec`` into ``output_dir``; with ``resume`` continue from the last checkpoint.

    The directory is locked for the whole run, and nothing in it changes before the model is
    built and the checkpoint loaded (see `modaloom.core.run_dir`).

    Args:
        spec: a validated spec from `load_spec`.
        output_dir: run directory (spec.yaml, metrics.jsonl, artifacts/, checkpoints/).
        registry: the registry the spec was validated with (the default one when omitted).
        resume: continue from the newest intact checkpoint in ``output_dir``; start from
            scratch, with a warning, when there is none.
        overwrite: move a run already in ``output_dir`` aside to ``OUTPUT.old-<time>``.
        show_progress: show a tqdm bar on the main process.

    Raises:
        RunDirectoryError: another process trains into ``output_dir``, or it holds a run and
            neither ``resume`` nor ``overwrite`` is given.
        CheckpointError: no intact checkpoint to resume, or it does not fit the model.
    """
    if registry is None:
        from modaloom.core.plugins import default_registry

        registry = default_registry()
    output = Path(output_dir)
    trackers = tracking.accelerator_kwargs(spec, registry, output)
    accelerator = make_accelerator(
        spec.train.precision, spec.train.gradient_accumulation, **trackers
    )
    tree = spec_to_tree(spec)
    claimed = run_dir.claim(accelerator, output, tree, resume=resume, overwrite=overwrite)
    try:
        fresh = claimed.checkpoint is None or not (output / ARTIFACTS_DIR).is_dir()
        init = resolve_source(spec) if claimed.checkpoint is None else None  # not on resume
        session = setup_session(spec, output, registry, show_progress, accelerator, fresh, init)
        if claimed.checkpoint is not None:
            session.resume(claimed.checkpoint)
        if accelerator.is_main_process:
            claimed.commit(tree, session.step)
            if session.init_report is not None:
                session.init_report.write(output)
                log.warning("%s; report in %s", session.init_report.summary(), output)
        tracking.start(accelerator, spec, session.step)
        return session.run()
    finally:
        tracking.finish(accelerator)
        claimed.release()
