"""Static parts of the spec: base classes every component config extends, train settings, and
the experiment's sections (`ExperimentSpec`, `ModelSpec`, `DataSpec`) that the registry-built
spec classes narrow.

`load_spec` returns an `ExperimentSpec`: code reads a spec through these static types. The class
it actually returns is built by `modaloom.core.spec.build_spec_class` from the registry: its
sections subclass these, with the component fields narrowed to discriminated unions of the
registered configs and one field per registered modality under ``data`` (``data.text``, ...),
read with `DataSpec.modality`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

from modaloom.core.errors import SpecProblems

Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
"""A random seed: what every generator accepts (0 .. 2**32 - 1)."""


class Spec(BaseModel):
    """Base of every spec model: unknown keys are errors, instances are immutable."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
    )


class Reference(NamedTuple):
    """A name a config uses for another entry of the spec (see `modaloom.core.spec_references`).

    Attributes:
        path: the field holding the name, relative to the config (``a``, ``groups.0.1.0``).
        name: the name used.
        kind: what it names: a component, a component of a registered decoder type, or an
            objective (by ``name:``, else ``type``).
        types: the ``type:`` values the named entry may have; empty = any.
    """

    path: str
    name: str
    kind: Literal["component", "decoder", "objective"] = "component"
    types: tuple[str, ...] = ()


def component_references(field: str, names: str | Iterable[str] | None) -> list[Reference]:
    """References to the component(s) of a field holding a name, a list of names or ``None``."""
    if names is None:
        return []
    if isinstance(names, str):
        return [Reference(field, names)]
    return [Reference(f"{field}.{index}", name) for index, name in enumerate(names)]


def group_references(field: str, group: Sequence[str | list[str]] | None) -> list[Reference]:
    """References to the components of a modality group (``[text, [vision, audio]]``)."""
    return [
        reference
        for position, member in enumerate(group or ())
        for reference in component_references(f"{field}.{position}", member)
    ]


def group_list_references(
    field: str, groups: Sequence[Sequence[str | list[str]]]
) -> list[Reference]:
    """References to the components of a list of modality groups."""
    return [r for g, group in enumerate(groups) for r in group_references(f"{field}.{g}", group)]


def objective_reference(
    field: str, name: str | None, types: tuple[str, ...] = ()
) -> list[Reference]:
    """A reference to the objective a field names, if it names one."""
    return [] if name is None else [Reference(field, name, "objective", types)]


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

    def references(self) -> list[Reference]:
        """The components and objectives this config names, checked when the spec loads."""
        return []


class VisualTokenizerSpec(Spec):
    """Base of visual tokenizer configs (an objective's ``visual_tokenizer``, e.g. `mvlm`'s)."""

    type: str
    """Registered visual tokenizer name."""


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

    def references(self) -> list[Reference]:
        """The components and objectives this config names, checked when the spec loads."""
        return []


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

    type: Literal["cosine", "linear", "constant", "constant_then_linear"] = "cosine"
    """Shape of the decay after warm-up; ``constant_then_linear`` holds the peak for
    ``hold_steps`` and then decays linearly (COTS)."""
    warmup_steps: int = Field(0, ge=0)
    """Steps of linear warm-up from 0 to the peak learning rate."""
    hold_steps: int = Field(0, ge=0)
    """``constant_then_linear``: steps at the peak learning rate after the warm-up."""
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Final learning rate as a fraction of the peak."""

    @model_validator(mode="after")
    def _hold_needs_its_type(self) -> SchedulerSpec:
        if self.hold_steps and self.type != "constant_then_linear":
            raise ValueError(
                f"hold_steps applies to type constant_then_linear, not {self.type}; "
                "set type: constant_then_linear or remove hold_steps"
            )
        return self


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
    data: dict[str, dict[str, Any]] = {}
    """Modality settings this stage overrides, by modality: ``{video: {frames: 1}}`` trains
    the stage on one-frame clips (a Frozen-in-Time curriculum); checked against
    ``data.<modality>`` when training starts."""


class InitFromSpec(Spec):
    """Weights to start from (``train.init_from``): another run's, with a fresh optimizer,
    schedule, step, data position and random state."""

    path: str
    """A run directory (its newest intact checkpoint) or a ``checkpoints/step-N`` directory."""
    components: list[str] | None = None
    """Components to load, by name; every component both models have when omitted."""
    objectives: list[str] = []
    """Objectives (by name) whose heads, momentum copies and queues are loaded; none unless
    named."""


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
    seed: Seed = 0
    """Seed of every random number generator (model init, data order, augmentation)."""
    checkpoint_every: int = Field(500, gt=0)
    """Write a checkpoint every this many steps (and at the end)."""
    keep_last: int | None = Field(None, gt=0)
    """Keep only the newest N checkpoints."""
    log_every: int = Field(10, gt=0)
    """Append a line to metrics.jsonl every this many steps."""
    init_from: InitFromSpec | None = None
    """Start from another run's weights (a fine-tuning run); only when this run starts from
    scratch: ``--resume`` continues this run's own checkpoints."""
    eval_every: int | None = Field(None, gt=0)
    """Run the spec's ``eval:`` section every this many steps and after the last one, on every
    rank; the metrics go to metrics.jsonl (``eval/<metric>``) and, after the last step, to
    metrics.json in the run directory. ``null``: evaluate only with ``modaloom eval``."""
    log_with: list[str] = []
    """Experiment trackers that receive every number of metrics.jsonl and the resolved spec
    as hyperparameters: Accelerate's names (``tensorboard``, ``wandb``, ``mlflow``,
    ``comet_ml``, ``aim``, ``clearml``, ``dvclive``, ``swanlab``, ``trackio``, ``all``) or a
    plugin's tracker (`modaloom.core.tracking`). Logs of local trackers go to
    ``OUTPUT/trackers``."""
    tracker_config: dict[str, dict[str, Any]] = {}
    """Per tracker named in ``log_with``, keyword arguments for it, passed through (Accelerate's
    ``init_kwargs``): ``{wandb: {entity: me, tags: [a]}, tensorboard: {flush_secs: 30}}``."""

    @model_validator(mode="after")
    def _configured_trackers_are_used(self) -> TrainSpec:
        unused = sorted(set(self.tracker_config) - set(self.log_with))
        if unused and "all" not in self.log_with:
            fix = "is not in train.log_with; add it there or remove it"
            raise SpecProblems([(f"tracker_config.{name}", fix) for name in unused])
        return self

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


OnError = Literal["skip", "raise"]
Mixing = Literal["batch", "sample"]


class ModelSpec(Spec):
    """What to build (``model``): named components and the objectives over them."""

    components: dict[str, ComponentSpec]
    """Encoders and decoders by name (``text``, ``vision``, ...)."""
    objectives: list[ObjectiveSpec]
    """Objectives; their ``*_loss`` terms are weighted and summed."""


class DataSpec(Spec):
    """Where samples come from and how they are batched (``data``)."""

    sources: dict[str, SourceSpec]
    """Training sources by name; several are mixed by weight."""
    eval_sources: dict[str, SourceSpec] = {}
    """Sources only evaluators read."""
    batch_size: int = Field(32, gt=0)
    """Samples per batch and process."""
    eval_batch_size: int | None = Field(None, gt=0)
    """Samples per evaluation batch; ``batch_size`` when omitted."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes per training process."""
    on_error: OnError = "skip"
    """A corrupt sample is skipped, counted and logged (``skip``) or stops the run (``raise``)."""
    mixing: Mixing = "batch"
    """Several sources mix per batch (each batch from one source) or per sample."""
    cache_media: bool = False
    """Decode each training media field once, without random augmentation, and keep it in
    memory (per DataLoader worker); text is still processed every time. For small data sets
    such as digits-av."""

    def modality(self, name: str) -> Spec | None:
        """The settings of a registered modality (``data.text``, ``data.video``, ...), or
        ``None`` when no such modality is registered."""
        value = getattr(self, name, None)
        return value if isinstance(value, Spec) else None


class ExperimentSpec(Spec):
    """One experiment: ``model``, ``data``, ``train`` and ``eval``; the cross-references between
    sections are checked here."""

    model: ModelSpec
    """The composition."""
    data: DataSpec
    """The data."""
    train: TrainSpec
    """The training schedule."""
    eval: list[EvaluatorSpec] = []
    """Evaluators run by ``modaloom eval`` and ``train.eval_every``."""

    @model_validator(mode="after")
    def _references_exist(self, info: ValidationInfo) -> ExperimentSpec:
        from modaloom.core.spec_references import reference_problems  # it reads these classes

        registry = (info.context or {}).get("registry")
        problems = reference_problems(self, registry)
        if problems:
            raise SpecProblems(problems)
        return self
