"""Hugging Face `TimesformerModel` checkpoints in modaloom's `TimeSformer`, every tensor used.

A `transformers` TimeSformer (``facebook/timesformer-base-finetuned-k400``, or any directory
saved by `TimesformerModel.save_pretrained`) holds the same divided space-time blocks as
`modaloom.modalities.timesformer.TimeSformer`, under other names and with fused ``qkv``
projections. `load_hf_timesformer` maps each of its tensors:

=================================================  =============================================
Hugging Face                                       modaloom
=================================================  =============================================
``embeddings.cls_token``, ``position_embeddings``  ``vit.embeddings.*``
``embeddings.patch_embeddings.projection.*``       ``vit.embeddings.patch_embeddings.projection.*``
``embeddings.time_embeddings``                     ``time_embed`` (resized to ``num_frames``)
``encoder.layer.i.attention.attention.qkv``        ``vit.layers.i.attention.{q,k,v}_proj``
``encoder.layer.i.attention.output.dense``         ``vit.layers.i.attention.o_proj``
``encoder.layer.i.intermediate.dense``             ``vit.layers.i.mlp.fc1``
``encoder.layer.i.output.dense``                   ``vit.layers.i.mlp.fc2``
``encoder.layer.i.layernorm_before/after``         ``vit.layers.i.layernorm_before/after``
``encoder.layer.i.temporal_layernorm``             ``temporal.i.layernorm``
``encoder.layer.i.temporal_attention.*``           ``temporal.i.attention.*`` (qkv split likewise)
``encoder.layer.i.temporal_dense``                 ``temporal.i.temporal_fc``
``layernorm``                                      ``vit.layernorm``
=================================================  =============================================

A video classification checkpoint's ``classifier`` is left out. With the same input (T > 1
frames at the checkpoint's image size), the encoder's sequence equals `TimesformerModel`'s
``last_hidden_state`` up to token order: modaloom's is frame-major (``[CLS]``, then the P
patches of each frame), Hugging Face's position-major (the T frames of each patch). Differences
that remain by design: one frame (an image) skips the temporal branch and ``time_embed``, so it
gives the ViT's output (Hugging Face applies both); other image sizes interpolate the position
embeddings bicubically (Hugging Face: nearest); stochastic depth (``drop_path_rate``) is not
applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PretrainedConfig, TimesformerConfig, ViTConfig

from modaloom.core.compose import BuildContext
from modaloom.core.errors import SpecError
from modaloom.modalities.hf import (
    ATTENTION,
    HFEncoderSpec,
    component_path,
    log_position_resize,
    log_resize,
)
from modaloom.modalities.hf_checkpoint import (
    LoadReport,
    load_with_info,
    quiet_transformers,
    refuse_partial_load,
)

if TYPE_CHECKING:
    from transformers import TimesformerModel

    from modaloom.modalities.timesformer import TimeSformer

__all__ = [
    "TimesformerCheckpoint",
    "export_hf_timesformer",
    "is_timesformer_checkpoint",
    "kept_timesformer",
    "load_hf_timesformer",
    "read_hf_timesformer",
    "timesformer_config",
    "timesformer_tensors",
]

VIT_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
    "qkv_bias",
)
"""`TimesformerConfig` fields that carry over to the spatial `ViTConfig` unchanged."""

LAYER = r"encoder\.layer\.(\d+)\."
RENAMES = (
    (r"embeddings\.(cls_token|position_embeddings)", r"vit.embeddings.\1"),
    (r"embeddings\.patch_embeddings\.(.+)", r"vit.embeddings.patch_embeddings.\1"),
    (r"embeddings\.time_embeddings", "time_embed"),
    (LAYER + r"attention\.output\.dense\.(\w+)", r"vit.layers.\1.attention.o_proj.\2"),
    (LAYER + r"intermediate\.dense\.(\w+)", r"vit.layers.\1.mlp.fc1.\2"),
    (LAYER + r"output\.dense\.(\w+)", r"vit.layers.\1.mlp.fc2.\2"),
    (LAYER + r"(layernorm_before|layernorm_after)\.(\w+)", r"vit.layers.\1.\2.\3"),
    (LAYER + r"temporal_layernorm\.(\w+)", r"temporal.\1.layernorm.\2"),
    (LAYER + r"temporal_attention\.output\.dense\.(\w+)", r"temporal.\1.attention.o_proj.\2"),
    (LAYER + r"temporal_dense\.(\w+)", r"temporal.\1.temporal_fc.\2"),
    (r"layernorm\.(\w+)", r"vit.layernorm.\1"),
)
"""(Hugging Face key, modaloom key) of the tensors copied as they are."""
FUSED = (
    (LAYER + r"attention\.attention\.qkv\.(\w+)", r"vit.layers.\1.attention.{}_proj.\2"),
    (LAYER + r"temporal_attention\.attention\.qkv\.(\w+)", r"temporal.\1.attention.{}_proj.\2"),
)
"""(Hugging Face key, modaloom key pattern) of the fused projections split into q, k, v."""


def timesformer_tensors(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """A `TimesformerModel` state dict in `TimeSformer`'s names.

    Args:
        state: `TimesformerModel.state_dict()`.

    Returns:
        The tensors by `TimeSformer` key, and the Hugging Face keys no rule maps.
    """
    mapped: dict[str, Tensor] = {}
    unmapped = []
    for key, tensor in state.items():
        fused = _match(FUSED, key)
        renamed = _match(RENAMES, key)
        if fused is not None:
            match, target = fused
            for part, chunk in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                mapped[match.expand(target.format(part))] = chunk.clone()
        elif renamed is not None:
            match, target = renamed
            mapped[match.expand(target)] = tensor
        else:
            unmapped.append(key)
    return mapped, unmapped


def _match(rules: tuple[tuple[str, str], ...], key: str) -> tuple[re.Match[str], str] | None:
    """The first rule whose pattern matches the whole ``key``: (match, target)."""
    for pattern, target in rules:
        match = re.fullmatch(pattern, key)
        if match is not None:
            return match, target
    return None


def _sources(key: str) -> list[str] | None:
    """The `TimeSformer` keys a Hugging Face key is made of (three for a fused ``qkv``)."""
    fused = _match(FUSED, key)
    if fused is not None:
        match, target = fused
        return [match.expand(target.format(part)) for part in "qkv"]
    renamed = _match(RENAMES, key)
    return None if renamed is None else [renamed[0].expand(renamed[1])]


def timesformer_config(model: TimeSformer) -> TimesformerConfig:
    """The `TimesformerConfig` of ``model``: its ViT's sizes, its time embedding's length and
    divided space-time attention."""
    fields: dict[str, Any] = {name: getattr(model.config, name) for name in VIT_FIELDS}
    frames = int(model.time_embed.shape[1])
    return TimesformerConfig(**fields, num_frames=frames, attention_type="divided_space_time")


def export_hf_timesformer(model: TimeSformer) -> TimesformerModel:
    """``model`` as a `transformers` `TimesformerModel` with every tensor copied (the inverse
    of `timesformer_tensors`: ``q``, ``k`` and ``v`` fused back into ``qkv``).

    Raises:
        ValueError: a tensor of either model has no counterpart in the other.
    """
    from transformers import TimesformerModel  # lazily: only a spec that uses it loads it

    ours = model.state_dict()
    with quiet_transformers():
        target = TimesformerModel(timesformer_config(model))
    tensors: dict[str, Tensor] = {}
    used: set[str] = set()
    for key in target.state_dict():
        sources = _sources(key)
        if sources is None or not all(source in ours for source in sources):
            raise ValueError(f"no TimeSformer tensor maps to TimesformerModel's {key}")
        tensors[key] = torch.cat([ours[source] for source in sources], dim=0)
        used.update(sources)
    if used != set(ours):
        raise ValueError(f"TimeSformer tensors without a place: {sorted(set(ours) - used)[:3]}")
    target.load_state_dict(tensors, strict=True)
    return target


def kept_timesformer(directory: str, overrides: Mapping[str, Any]) -> tuple[ViTConfig, int]:
    """The spatial `ViTConfig` and frame count of the `TimesformerConfig` a run kept for a
    ``timesformer`` component (`modaloom.core.portable`), ``overrides`` set over it."""
    with quiet_transformers():
        config = TimesformerConfig.from_pretrained(
            directory, local_files_only=True, trust_remote_code=False
        )
    return _vit_config(config, overrides), int(config.num_frames)


def is_timesformer_checkpoint(checkpoint: str) -> bool:
    """Whether ``checkpoint``'s ``config.json`` is a TimeSformer's (``False`` when unreadable:
    the ViT loader then reports why)."""
    try:
        with quiet_transformers():
            fields, _ = PretrainedConfig.get_config_dict(checkpoint, local_files_only=True)
    except OSError:
        return False
    return fields.get("model_type") == "timesformer"


def _read_checkpoint(spec: HFEncoderSpec, ctx: BuildContext) -> TimesformerModel:
    """The `TimesformerModel` of ``spec.pretrained``, refused unless it loads whole."""
    from transformers import TimesformerModel  # lazily: only a spec that uses it loads it

    where = f"{component_path(spec, ctx)}.pretrained"
    checkpoint = str(spec.pretrained)
    try:
        model, info = load_with_info(TimesformerModel, checkpoint)
    except OSError as exc:
        problem = f"cannot load a TimesformerModel from {checkpoint!r}: {exc}"
        raise SpecError([(where, problem)]) from None
    missing, unexpected = info["missing_keys"], info["unexpected_keys"]
    report = LoadReport.of(missing, unexpected, info["mismatched_keys"], unused=(r"classifier\.",))
    refuse_partial_load(report, where, checkpoint, "TimesformerModel")
    attention = model.config.attention_type
    if attention != "divided_space_time":
        problem = (
            f"checkpoint {checkpoint!r} uses {attention!r} attention; the timesformer encoder "
            "loads divided_space_time checkpoints only"
        )
        raise SpecError([(where, problem)])
    return model


def _vit_config(config: TimesformerConfig, overrides: Mapping[str, Any]) -> ViTConfig:
    fields: dict[str, Any] = {name: getattr(config, name) for name in VIT_FIELDS}
    return ViTConfig(**{**fields, **overrides, "attn_implementation": ATTENTION})


@dataclass(frozen=True)
class TimesformerCheckpoint:
    """A `TimesformerModel` checkpoint read and renamed for `TimeSformer`.

    Attributes:
        vit_config: the spatial `ViTConfig` (the checkpoint's sizes, the spec's overrides).
        frames: the length of its time embeddings.
        tensors: its tensors by `TimeSformer` key.
        unmapped: its keys no rule maps (reported as unused).
    """

    vit_config: ViTConfig
    frames: int
    tensors: dict[str, Tensor]
    unmapped: list[str]


def read_hf_timesformer(spec: HFEncoderSpec, ctx: BuildContext) -> TimesformerCheckpoint:
    """Read the `TimesformerModel` at ``spec.pretrained`` (``config`` overrides its fields).

    Raises:
        SpecError: at ``model.components.<name>.pretrained``: the checkpoint cannot be read,
            is not a whole `TimesformerModel` or not a divided space-time one.
    """
    source = _read_checkpoint(spec, ctx)
    tensors, unmapped = timesformer_tensors(source.state_dict())
    config = _vit_config(source.config, spec.config)
    return TimesformerCheckpoint(config, int(source.config.num_frames), tensors, unmapped)


def load_hf_timesformer(
    model: TimeSformer,
    saved: TimesformerCheckpoint,
    spec: HFEncoderSpec,
    ctx: BuildContext,
    size: int | None,
) -> None:
    """Copy every tensor of ``saved`` into ``model`` (built from ``saved.vit_config``).

    The time embeddings are resized to ``model``'s length (nearest, as TimeSformer does) and a
    position-embedding interpolation to the data's frame ``size`` is logged.

    Raises:
        SpecError: at ``model.components.<name>.pretrained``: the tensors do not fill the model
            exactly (missing, unused or of other shapes).
    """
    tensors = dict(saved.tensors)
    tensors["time_embed"] = _resized_time(spec, ctx, tensors["time_embed"], model.time_embed)
    _load_whole(model, tensors, saved.unmapped, spec, ctx)
    log_position_resize(spec, ctx, saved.vit_config, size)


def _resized_time(spec: HFEncoderSpec, ctx: BuildContext, saved: Tensor, own: Tensor) -> Tensor:
    """The checkpoint's time embeddings (1, T', D) at ``own``'s length T (nearest), logged."""
    frames, trained = own.shape[1], saved.shape[1]
    if frames == trained or saved.shape[2] != own.shape[2]:
        return saved
    log_resize(
        spec,
        ctx,
        f"time embeddings for {trained} frames are interpolated (nearest) to {frames} frames",
    )
    return F.interpolate(saved.transpose(1, 2), size=frames, mode="nearest").transpose(1, 2)


def _load_whole(
    model: TimeSformer,
    tensors: dict[str, Tensor],
    unmapped: list[str],
    spec: HFEncoderSpec,
    ctx: BuildContext,
) -> None:
    """Copy ``tensors`` into ``model``, refused unless they fill it exactly."""
    own = model.state_dict()
    mismatched = [
        (key, tuple(tensor.shape), tuple(own[key].shape))
        for key, tensor in tensors.items()
        if key in own and tensor.shape != own[key].shape
    ]
    report = LoadReport.of(
        own.keys() - tensors.keys(), [*unmapped, *(tensors.keys() - own.keys())], mismatched
    )
    where = f"{component_path(spec, ctx)}.pretrained"
    refuse_partial_load(report, where, str(spec.pretrained), "TimeSformer")
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
