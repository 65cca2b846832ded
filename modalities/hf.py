"""The Hugging Face base every built-in `transformers` wrapper uses: spec fields, loader, pooling.

The six wrappers (``bert``, ``vit``, ``clip_vision``, ``ast``, ``timesformer``/``frame_mean``'s
spatial ViT, ``bert_decoder``'s `BertLMHeadModel`) differ in their model class and in what they
do around it (AST's position resizing, TimeSformer's inflation, the decoder's sharing); those
stay in their own files. What they share is here, written once:

* `HFEncoderSpec`: the ``pretrained``, ``config`` and ``gradient_checkpointing`` fields;
* `load_hf_model`: a checkpoint (local files only) with ``config`` overrides, or a random init
  from ``config``, with PyTorch SDPA attention and gradient checkpointing when asked; a
  checkpoint that does not fill the model whole is refused (`modaloom.modalities.hf_checkpoint`);
* `log_resize` / `log_position_resize`: the one WARNING an intended resize of a checkpoint's
  tensors gets (AST positions, ViT positions, TimeSformer time embeddings);
* `pool_tokens`: the ``cls`` / ``mean`` global feature of a token sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import ValidationInfo, field_validator, model_validator
from torch import Tensor
from transformers import PretrainedConfig

from modaloom.core.compose import BuildContext
from modaloom.core.errors import SpecError, SpecProblems
from modaloom.core.portable import is_kept_component
from modaloom.core.spec_models import ComponentSpec
from modaloom.modalities.hf_checkpoint import (
    LoadReport,
    checkpoint_location_problem,
    load_with_info,
    quiet_transformers,
    refuse_partial_load,
)
from modaloom.modalities.hf_config import config_problems

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "HFEncoderSpec",
    "Pooling",
    "component_path",
    "kept_config",
    "load_hf_model",
    "log_position_resize",
    "log_resize",
    "masked_mean",
    "pool_tokens",
    "save_hf_config",
    "save_hf_model",
]

ModelT = TypeVar("ModelT", bound="PreTrainedModel")

log = logging.getLogger(__name__)

ATTENTION = "sdpa"
"""The attention implementation every wrapped model uses (PyTorch scaled-dot-product)."""

Pooling = Literal["cls", "mean"]
"""How a wrapper turns its token sequence into one global feature (see `pool_tokens`)."""


class HFEncoderSpec(ComponentSpec):
    """Base of the components that wrap a Hugging Face `transformers` model.

    Each subclass adds its ``type`` and its own fields; its docstring names the model and config
    classes that ``pretrained`` and ``config`` refer to.
    """

    pretrained: str | None = None
    """Checkpoint directory, or a model name already in the Hugging Face cache (local files only:
    nothing is downloaded); random init when omitted."""
    config: dict[str, Any] = {}
    """Fields of the model's `transformers` config: those of a random init, or overrides of the
    checkpoint's (with ``pretrained``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""

    hf_config: ClassVar[type[PretrainedConfig] | None] = None
    """The `transformers` config class ``config`` holds fields of (each subclass sets it)."""

    @field_validator("pretrained")
    @classmethod
    def _pretrained_is_here(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A local path must exist; a model name must be in the Hugging Face cache (so
        ``modaloom validate`` refuses what training could not read), unless the run being
        rebuilt kept what it took from it (`modaloom.core.portable`)."""
        problem = None if value is None else checkpoint_location_problem(value, context=info)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _config_fits(self) -> HFEncoderSpec:
        """``config`` must build a `hf_config` (see `modaloom.modalities.hf_config`)."""
        if self.hf_config is not None:
            standalone = self.pretrained is None and self.share_with is None
            problems = config_problems(self.hf_config, self.config, standalone)
            if problems:
                raise SpecProblems(problems)
        return self


def component_path(spec: ComponentSpec, ctx: BuildContext) -> str:
    """``model.components.<name>`` of the component ``spec`` configures (for error messages)."""
    name = next((name for name, other in ctx.specs.items() if other is spec), f"<{spec.type}>")
    return f"model.components.{name}"


def load_hf_model(
    model_class: type[ModelT],
    config_class: Callable[..., PretrainedConfig],
    spec: HFEncoderSpec,
    ctx: BuildContext,
    *,
    defaults: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    gradient_checkpointing: bool | None = None,
    unused: Collection[str] = (),
    uninitialised: Collection[str] = (),
) -> ModelT:
    """A `transformers` model from ``spec.pretrained`` (local files only) or a random init.

    With ``pretrained``, ``model_class.from_pretrained`` reads the checkpoint and the config
    fields update its config; without, ``model_class(config_class(**fields))``; when
    ``pretrained`` is a component directory a run kept (a configuration without weights, see
    `modaloom.core.portable`), ``model_class(its config)``, a random init that the run's
    weights replace, with none of a checkpoint's checks. Either way the
    model uses SDPA attention. A checkpoint must fill every weight of the model and have every
    tensor used, except those ``unused`` and ``uninitialised`` name (`LoadReport`);
    `transformers`' own load report is silenced.

    Args:
        model_class: the model class (`BertModel`, `ViTModel`, ...).
        config_class: its config class, or any callable taking config fields (random init only).
        spec: ``pretrained``, ``config`` and ``gradient_checkpointing``.
        ctx: the build context (names the component in errors).
        defaults: random init only: config fields that ``config`` may override (sizes read
            from the data: vocabulary, image size, spectrogram shape).
        overrides: the config fields to use instead of ``spec.config``.
        fixed: config fields set over ``config`` in both cases (``is_decoder``).
        model_kwargs: model constructor arguments (``add_pooling_layer=False``).
        gradient_checkpointing: whether to enable `transformers`' activation checkpointing
            (default: ``spec.gradient_checkpointing``).
        unused: patterns (regular expressions matched at the start) of checkpoint keys the
            wrapper leaves out on purpose: task heads, poolers, another tower.
        uninitialised: patterns (searched) of model keys a checkpoint may lack: weights the
            wrapper adds and initialises itself (a decoder's cross-attention).

    Returns:
        The model.

    Raises:
        SpecError: at ``model.components.<name>.pretrained``: the checkpoint cannot be read, or
            it leaves weights of the model uninitialised, has tensors the model does not use, or
            tensors of other shapes.
    """
    fields = {**(spec.config if overrides is None else overrides), **(fixed or {})}
    kwargs = dict(model_kwargs or {})
    if spec.pretrained is None:
        config = config_class(**{**(defaults or {}), **fields}, attn_implementation=ATTENTION)
        model = model_class(config, **kwargs)
    elif is_kept_component(spec.pretrained):
        model = model_class(kept_config(model_class, spec.pretrained, fields), **kwargs)
    else:
        patterns = (tuple(unused), tuple(uninitialised))
        model = _from_pretrained(model_class, spec, ctx, {**kwargs, **fields}, patterns)
    if gradient_checkpointing is None:
        gradient_checkpointing = spec.gradient_checkpointing
    if gradient_checkpointing:
        model.activation_checkpointing_enable()
    return model


def kept_config(
    model_class: type[PreTrainedModel], directory: str, fields: Mapping[str, Any]
) -> PretrainedConfig:
    """The configuration a run kept for a component (`modaloom.core.portable`), ``fields`` set
    over it, with SDPA attention: the architecture as it was built, weights to be loaded."""
    config_class = model_class.config_class
    assert config_class is not None  # every model class wrapped here declares one
    with quiet_transformers():
        config = config_class.from_pretrained(
            directory, local_files_only=True, trust_remote_code=False
        )
    for key, value in fields.items():
        setattr(config, key, value)
    config._attn_implementation = ATTENTION
    return config


def save_hf_config(model: PreTrainedModel, directory: Path) -> None:
    """Write ``model``'s configuration (``config.json``) into ``directory``, no weights."""
    model.config.save_pretrained(str(directory))


def save_hf_model(model: PreTrainedModel, directory: Path) -> None:
    """Write ``model`` as `transformers` does (``config.json``, ``model.safetensors``)."""
    with quiet_transformers():
        model.save_pretrained(str(directory))


def _from_pretrained(
    model_class: type[ModelT],
    spec: HFEncoderSpec,
    ctx: BuildContext,
    kwargs: dict[str, Any],
    patterns: tuple[tuple[str, ...], tuple[str, ...]],
) -> ModelT:
    """``model_class.from_pretrained`` on local files, quietly; refused unless it loads whole."""
    where = f"{component_path(spec, ctx)}.pretrained"
    checkpoint = str(spec.pretrained)
    try:
        model, info = load_with_info(
            model_class,
            checkpoint,
            attn_implementation=ATTENTION,
            ignore_mismatched_sizes=True,
            **kwargs,
        )
    except OSError as exc:
        problem = f"cannot load a {model_class.__name__} from {checkpoint!r}: {exc}"
        raise SpecError([(where, problem)]) from None
    unused, uninitialised = patterns
    report = LoadReport.of(
        info["missing_keys"],
        info["unexpected_keys"],
        info["mismatched_keys"],
        unused=unused,
        uninitialised=uninitialised,
    )
    refuse_partial_load(report, where, checkpoint, model_class.__name__)
    return model


def log_resize(spec: HFEncoderSpec, ctx: BuildContext, change: str) -> None:
    """Log, at WARNING, an intended resize of a checkpoint's tensors (once per load)."""
    log.warning("%s.pretrained %r: %s", component_path(spec, ctx), spec.pretrained, change)


def log_position_resize(
    spec: HFEncoderSpec, ctx: BuildContext, config: PretrainedConfig, size: int | None
) -> None:
    """Log that a vision checkpoint's position embeddings will be interpolated (bicubic, in the
    forward pass) to another image size, when ``size`` differs from the checkpoint's.

    Args:
        spec: the component's spec (``pretrained`` set).
        ctx: the build context.
        config: the loaded model's config (``image_size``, ``patch_size``).
        size: the side of the frames the data gives; ``None`` = unknown (nothing logged).
    """
    trained, patch = int(config.image_size), int(config.patch_size)
    if size is None or size == trained:
        return
    log_resize(
        spec,
        ctx,
        f"position embeddings for {trained}-pixel images ({trained // patch}x{trained // patch} "
        f"patches) are interpolated (bicubic) to {size}-pixel frames "
        f"({size // patch}x{size // patch} patches)",
    )


def masked_mean(sequence: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over valid positions: sequence (B, N, D), mask (B, N) -> (B, D)."""
    if mask is None:
        return sequence.mean(dim=1)
    weights = mask.to(sequence.dtype).unsqueeze(-1)
    return (sequence * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def pool_tokens(
    sequence: Tensor, pooling: str, *, skip: int = 1, mask: Tensor | None = None
) -> Tensor:
    """The global feature of a token sequence.

    Args:
        sequence: (B, N, D), the [CLS] token first.
        pooling: ``cls`` (the first token) or ``mean`` (the mean of the tokens after the first
            ``skip``, valid ones only when ``mask`` is given).
        skip: leading tokens the mean leaves out ([CLS]; AST's [CLS] and distillation tokens).
        mask: (B, N) 1 for valid tokens; ``None`` = all valid.

    Returns:
        (B, D).
    """
    if pooling == "cls":
        return sequence[:, 0]
    return masked_mean(sequence[:, skip:], None if mask is None else mask[:, skip:])
