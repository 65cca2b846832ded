"""Static parts of the spec: base classes every component config extends, and train settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Spec(BaseModel):
    """Base of every spec model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, use_attribute_docstrings=True
    )


class ComponentSpec(Spec):
    """Base of encoder and decoder configs (``model.components.<name>``)."""

    type: str
    """Registered encoder or decoder name."""
    share_with: str | None = None
    """Another component whose parameters this one uses (what is shared depends on the type)."""
    input: str | None = None
    """Batch field to encode; defaults to the modality the encoder type declares."""
    freeze: bool = False
    """Keep this component's parameters fixed during training."""


class ObjectiveSpec(Spec):
    """Base of objective configs (``model.objectives.<i>``)."""

    type: str
    """Registered objective name."""
    weight: float = Field(1.0, ge=0.0)
    """Multiplier of this objective's loss terms in the total."""
    name: str | None = None
    """Prefix of its metric names; defaults to the type."""


class SourceSpec(Spec):
    """Base of data source configs (``data.sources.<name>``)."""

    type: str
    """Registered source name."""
    weight: float = Field(1.0, gt=0.0)
    """Relative sampling weight when several sources are mixed."""
    objectives: list[str] | None = None
    """Objectives (by name) trained on this source's batches; all when omitted. Needs
    ``data.mixing: batch`` when several sources are mixed."""


class EvaluatorSpec(Spec):
    """Base of evaluator configs (``eval.<i>``)."""

    type: str
    """Registered evaluator name."""
    source: str
    """Name of an entry of ``data.eval_sources`` (or ``data.sources``)."""


class OptimizerSpec(Spec):
    """AdamW; weight decay applies only to parameters with two or more dimensions."""

    lr: float = Field(1e-4, gt=0.0)
    """Peak learning rate."""
    weight_decay: float = Field(0.02, ge=0.0)
    """Decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = Field(1e-8, gt=0.0)
    """Adam epsilon."""


class SchedulerSpec(Spec):
    """Linear warm-up, then decay over the total number of steps of all stages."""

    type: Literal["cosine", "linear", "constant"] = "cosine"
    """Shape of the decay after warm-up."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warm-up from 0 to the peak learning rate."""
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Final learning rate as a fraction of the peak."""


class StageSpec(Spec):
    """One training stage; stages run in order and share optimizer and schedule."""

    name: str
    """Stage name, used in logs and checkpoints."""
    steps: int = Field(gt=0)
    """Optimizer steps in this stage."""
    sources: list[str] | None = None
    """Names of ``data.sources`` used in this stage; all of them when omitted."""
    actions: list[str] = []
    """``component.action`` to run when the stage starts, e.g. ``vision.inflate`` (OmniVL)."""


class TrainSpec(Spec):
    """How to train: stages, optimizer, schedule, precision, checkpoints."""

    steps: int | None = Field(None, gt=0)
    """Shorthand for a single stage named ``main`` with this many steps."""
    stages: list[StageSpec] = []
    """Ordered stages; give either ``steps`` or ``stages``."""
    optimizer: OptimizerSpec = OptimizerSpec()
    """Optimizer settings."""
    scheduler: SchedulerSpec = SchedulerSpec()
    """Learning-rate schedule."""
    gradient_accumulation: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    """Clip the global gradient norm to this value; ``null`` disables clipping."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Mixed precision mode passed to Accelerate."""
    seed: int = 0
    """Seed of every random number generator (model init, data order, augmentation)."""
    checkpoint_every: int = Field(500, gt=0)
    """Write a checkpoint every this many steps (and at the end)."""
    keep_last: int | None = Field(None, gt=0)
    """Keep only the newest N checkpoints."""
    log_every: int = Field(10, gt=0)
    """Append a line to metrics.jsonl every this many steps."""
    eval_every: int | None = Field(None, gt=0)
    """Run the spec's ``eval:`` section every this many steps and after the last one, on every
    rank; the metrics go to metrics.jsonl (``eval/<metric>``) and, after the last step, to
    metrics.json in the run directory. ``null``: evaluate only with ``modaloom eval``."""

    @model_validator(mode="after")
    def _steps_or_stages(self) -> TrainSpec:
        if (self.steps is None) == (not self.stages):
            raise ValueError("give either `steps: N` or a list of `stages`, not both or neither")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        return self

    def resolved_stages(self) -> list[StageSpec]:
        """The stages to run (``steps: N`` becomes one stage named ``main``)."""
        if self.stages:
            return list(self.stages)
        assert self.steps is not None
        return [StageSpec(name="main", steps=self.steps)]
