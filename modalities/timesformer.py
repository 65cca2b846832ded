"""Video encoder: a divided space-time TimeSformer inflated from a ViT (OmniVL).

`TimeSformer` (SPEC §A1) wraps a `transformers.ViTModel` and adds, per block, a temporal branch
(LayerNorm, attention over the T tokens at each spatial position, ``temporal_fc``) plus a
learnable temporal embedding ``time_embed``. The spatial parts *are* the ViT's modules, so any
`ViTModel` checkpoint loads into it (`inflate_from_vit`), and with one frame it computes exactly
what the ViT computes: images and videos go through the same module.

OmniVL's 3-D tubelet embedding (SPEC §A1): with ``tubelet: t > 1`` a video's T frames are
embedded by a `torch.nn.Conv3d` with kernel = stride = (t, p, p) into T / t temporal positions
(``time_embed`` has T / t entries; `modaloom.modalities.tubelet`); images and one-frame clips keep
the ViT's 2-D patch convolution. The 3-D kernel is inflated from the 2-D one: ``average`` (the
default, OmniVL's code) or ``central``. T must be a multiple of t.

Token layout of the output sequence: [CLS] first, then the patch tokens frame by frame
(frame-major: ``sequence[:, 1:].view(B, T, P, D)``; T / t positions with a tubelet t).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import ViTConfig

from modaloom.core.compose import BuildContext
from modaloom.core.errors import ExportError, SpecError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Encoder, EncoderOutput
from modaloom.core.portable import is_kept_component
from modaloom.core.registry import Registry
from modaloom.modalities.hf import (
    HFEncoderSpec,
    Pooling,
    component_path,
    pool_tokens,
    save_hf_model,
)
from modaloom.modalities.image import load_vit, visual_size
from modaloom.modalities.timesformer_hf import (
    export_hf_timesformer,
    is_timesformer_checkpoint,
    kept_timesformer,
    load_hf_timesformer,
    read_hf_timesformer,
    timesformer_config,
)
from modaloom.modalities.tubelet import (
    TubeletInit,
    inflate_tubelet,
    tubelet_conv,
    tubelet_tokens,
)

if TYPE_CHECKING:
    from transformers import ViTModel
    from transformers.models.vit.modeling_vit import ViTEmbeddings, ViTLayer

__all__ = [
    "TemporalAttention",
    "TimeSformer",
    "TimeSformerEncoder",
    "TimeSformerSpec",
    "inflate_from_vit",
]


class TemporalAttention(nn.Module):
    """The temporal branch of one divided space-time block: LayerNorm, attention, ``temporal_fc``.

    Args:
        config: the ViT config (width, heads, LayerNorm eps, attention implementation).
    """

    def __init__(self, config: ViTConfig) -> None:
        from transformers.models.vit.modeling_vit import ViTAttention  # lazily, as in load_vit

        super().__init__()
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTAttention(config)
        self.temporal_fc = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """Attend over time: (B*P, T, D) -> (B*P, T, D), the residual update (not yet added)."""
        attended, _ = self.attention(self.layernorm(tokens))
        return cast(Tensor, self.temporal_fc(attended))


class TimeSformer(nn.Module):
    """Divided space-time ViT over images (B, 3, H, W) and videos (B, T, 3, H, W).

    Each block runs (1) temporal attention over the T tokens at every spatial position, added
    through ``temporal_fc``; (2) spatial attention within each frame, with [CLS] copied into every
    frame and its T outputs averaged; (3) the MLP. With T == 1 the temporal branch and
    ``time_embed`` are skipped, so an image or one-frame video gives exactly the ViT's output.
    Build it with `inflate_from_vit`; the constructor leaves the temporal branches at PyTorch's
    default initialisation (a state dict is loaded over them on resume).

    Args:
        vit: the spatial model; its embeddings, layers and final LayerNorm are used as they are.
        num_frames: length of ``time_embed`` (temporal positions: frames / tubelet); other
            counts interpolate it (nearest, as TimeSformer does).

    Attributes:
        gradient_checkpointing: recompute each block in the backward pass while training.
        tubelet: frames per 3-D patch (`add_tubelet`); 1: every frame through the 2-D one.
        tubelet_init: how `inflate_tubelet` fills the 3-D kernel.
        tubelet_embed: the 3-D patch convolution, ``None`` with tubelet 1.
    """

    def __init__(self, vit: ViTModel, num_frames: int = 8) -> None:
        super().__init__()
        config = vit.config
        self.config = config
        self.vit = vit
        self.temporal = nn.ModuleList(
            [TemporalAttention(config) for _ in range(config.num_hidden_layers)]
        )
        weight = vit.embeddings.patch_embeddings.projection.weight
        self.temporal.to(device=weight.device, dtype=weight.dtype)
        self.time_embed = nn.Parameter(
            torch.zeros(1, num_frames, config.hidden_size, device=weight.device, dtype=weight.dtype)
        )
        self.gradient_checkpointing = False
        self.tubelet, self.tubelet_init = 1, cast(TubeletInit, "average")
        self.tubelet_embed: nn.Conv3d | None = None

    def add_tubelet(self, size: int, init: TubeletInit = "average") -> None:
        """Embed videos with a 3-D patch convolution over ``size`` frames, inflated from the
        2-D patch kernel as it is now (`inflate_tubelet`)."""
        projection = self.vit.embeddings.patch_embeddings.projection
        self.tubelet, self.tubelet_init = size, init
        self.tubelet_embed = tubelet_conv(projection, size)
        inflate_tubelet(self.tubelet_embed, projection, init)

    @property
    def hidden_size(self) -> int:
        """D, the token width."""
        return int(self.config.hidden_size)

    def frame_embedding(self, frames: int) -> Tensor:
        """``time_embed`` resized to ``frames`` positions: (1, T, D)."""
        if frames == self.time_embed.shape[1]:
            return self.time_embed
        resized = F.interpolate(self.time_embed.transpose(1, 2), size=frames, mode="nearest")
        return resized.transpose(1, 2)

    def steps(self, frames: int) -> int:
        """Temporal positions of a clip of ``frames`` frames (frames / tubelet for videos).

        Raises:
            SpecError: ``frames`` is not a multiple of the tubelet.
        """
        if frames == 1 or self.tubelet == 1:
            return frames
        if frames % self.tubelet:
            raise SpecError(
                [
                    (
                        "data.video.frames",
                        f"{frames} frames cannot be cut into tubelets of {self.tubelet}; give "
                        f"a multiple of {self.tubelet} frames or set the encoder's tubelet: 1",
                    )
                ]
            )
        return frames // self.tubelet

    def embed(self, pixel_values: Tensor) -> Tensor:
        """Patch, [CLS], position and time embeddings.

        Args:
            pixel_values: (B, T, 3, H, W).

        Returns:
            (B, 1 + T'*P, D): [CLS], then the P patches of each of the T' = T / tubelet
            temporal positions, position by position.
        """
        batch, frames = pixel_values.shape[:2]
        if self.steps(frames) != frames:
            assert self.tubelet_embed is not None
            embeddings = cast("ViTEmbeddings", self.vit.embeddings)
            cls, patches = tubelet_tokens(embeddings, self.tubelet_embed, pixel_values)
        else:
            dtype = self.vit.embeddings.patch_embeddings.projection.weight.dtype
            flat = pixel_values.flatten(0, 1).to(dtype)
            tokens = self.vit.embeddings(flat, interpolate_pos_encoding=True)  # (B*T, 1+P, D)
            cls = tokens[:, :1].unflatten(0, (batch, frames))[:, 0]  # the same in every frame
            patches = tokens[:, 1:].unflatten(0, (batch, frames))  # (B, T, P, D)
        steps = patches.shape[1]
        if steps > 1:
            patches = patches + self.frame_embedding(steps)[:, :, None]
        return torch.cat([cls, patches.flatten(1, 2)], dim=1)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Encode images or videos.

        Args:
            pixel_values: (B, 3, H, W) images or (B, T, 3, H, W) videos.

        Returns:
            (B, 1 + T*P, D) after the final LayerNorm; T = 1 for images.
        """
        video = pixel_values if pixel_values.ndim == 5 else pixel_values.unsqueeze(1)
        if video.ndim != 5:
            raise ValueError(
                f"expected (B, 3, H, W) or (B, T, 3, H, W), got {tuple(pixel_values.shape)}"
            )
        frames = self.steps(video.shape[1])
        hidden = self.embed(video)
        for layer, temporal in zip(self.vit.layers, self.temporal, strict=True):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden = checkpoint(
                    self.block, hidden, layer, temporal, frames, use_reentrant=False
                )
            else:
                hidden = self.block(hidden, layer, temporal, frames)
        return cast(Tensor, self.vit.layernorm(hidden))

    @staticmethod
    def block(hidden: Tensor, layer: nn.Module, temporal: nn.Module, frames: int) -> Tensor:
        """One divided space-time block.

        Args:
            hidden: (B, 1 + T*P, D), frame-major patches.
            layer: the ViT layer (spatial attention, LayerNorms, MLP).
            temporal: its `TemporalAttention`.
            frames: T.

        Returns:
            (B, 1 + T*P, D).
        """
        vit_layer = cast("ViTLayer", layer)
        if frames == 1:
            return cast(Tensor, vit_layer(hidden))
        batch, _, dim = hidden.shape
        cls, patches = hidden[:, :1], hidden[:, 1:].unflatten(1, (frames, -1))  # (B, T, P, D)
        per_position = patches.transpose(1, 2).flatten(0, 1)  # (B*P, T, D)
        update = temporal(per_position).unflatten(0, (batch, -1)).transpose(1, 2)
        patches = patches + vit_layer.dropout(update)
        cls_per_frame = cls[:, None].expand(batch, frames, 1, dim)
        per_frame = torch.cat([cls_per_frame, patches], dim=2).flatten(0, 1)  # (B*T, 1+P, D)
        attended, _ = vit_layer.attention(vit_layer.layernorm_before(per_frame))
        attended = vit_layer.dropout(attended).unflatten(0, (batch, frames))  # (B, T, 1+P, D)
        cls = cls + attended[:, :, :1].mean(dim=1)
        hidden = torch.cat([cls, (patches + attended[:, :, 1:]).flatten(1, 2)], dim=1)
        mlp = vit_layer.mlp(vit_layer.layernorm_after(hidden))
        return hidden + vit_layer.dropout(mlp)


def inflate_from_vit(vit: ViTModel, num_frames: int = 8) -> TimeSformer:
    """Build a `TimeSformer` around ``vit`` with its temporal branches initialised for video.

    Temporal attention and its LayerNorm are copied from the spatial ones, ``temporal_fc`` and
    ``time_embed`` are zeroed (SPEC §A1). Unlike TimeSformer/OmniVL, which leave the first
    block's ``temporal_fc`` at its random init (a quirk of their loading code), every block's
    ``temporal_fc`` is zeroed here, so the inflated model reproduces the ViT on each frame of a
    static video at initialisation; training moves ``temporal_fc`` away from zero in every block.

    Args:
        vit: a `ViTModel` (taken over, not copied).
        num_frames: length of ``time_embed``.

    Returns:
        The inflated model, sharing ``vit``'s parameters.
    """
    model = TimeSformer(vit, num_frames)
    initialise_temporal_from_spatial(model)
    return model


def initialise_temporal_from_spatial(model: TimeSformer) -> None:
    """Copy each block's spatial attention and LayerNorm into its temporal branch, zero
    ``temporal_fc`` and ``time_embed`` and re-inflate the tubelet kernel from the 2-D one, in
    place (OmniVL's stage-2 inflation after image-only training; the ``inflate`` stage
    action)."""
    with torch.no_grad():
        for layer, temporal in zip(model.vit.layers, model.temporal, strict=True):
            spatial = cast("ViTLayer", layer)
            branch = cast(TemporalAttention, temporal)
            branch.layernorm.load_state_dict(spatial.layernorm_before.state_dict())
            branch.attention.load_state_dict(spatial.attention.state_dict())
            nn.init.zeros_(branch.temporal_fc.weight)
            nn.init.zeros_(branch.temporal_fc.bias)
        model.time_embed.zero_()
    if model.tubelet_embed is not None:
        projection = model.vit.embeddings.patch_embeddings.projection
        inflate_tubelet(model.tubelet_embed, projection, model.tubelet_init)


# ------------------------------------------------------------------------------ encoder


class TimeSformerSpec(HFEncoderSpec):
    """A divided space-time video and image encoder inflated from a ViT (``model.components.*``).

    ``pretrained`` is a `transformers` `TimesformerModel` checkpoint, loaded with every tensor
    used (`modaloom.modalities.timesformer_hf`), or a `ViTModel` one, inflated to video
    (`inflate_from_vit`); ``config`` holds `ViTConfig` fields. A random init takes its image size
    from ``data.video.size`` (else ``data.image.size``). ``gradient_checkpointing`` recomputes
    each divided space-time block in the backward pass.
    """

    type: Literal["timesformer"] = "timesformer"
    hf_config = ViTConfig
    num_frames: int | None = Field(None, ge=1)
    """Frames per clip; the temporal embedding has ``num_frames / tubelet`` positions. Defaults
    to ``data.video.frames`` (without one, a TimeSformer checkpoint's positions, else 8)."""
    pooling: Pooling = "cls"
    """Global feature: the [CLS] token or the mean of all patch tokens."""
    tubelet: int = Field(1, ge=1)
    """Frames per 3-D patch (OmniVL: 2); videos must have a multiple of it, ``time_embed`` gets
    frames / tubelet positions. 1: each frame through the ViT's 2-D patch embedding."""
    tubelet_init: TubeletInit = "average"
    """How the 3-D kernel is inflated from the 2-D one: ``average`` (kernel / tubelet on every
    frame, OmniVL's code) or ``central`` (the kernel on the centre frame, zeros elsewhere)."""


class TimeSformerEncoder(Encoder):
    """`TimeSformer` over ``{"pixel_values": (B, T, 3, H, W) | (B, 3, H, W)}``.

    Returns sequence (B, 1 + T*P, D) ([CLS], then frame-major patches; T = 1 for images),
    pooled (B, D) and no mask.
    """

    modality = "video"

    def __init__(self, model: TimeSformer, pooling: str = "cls") -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling
        self.output_dim = model.hidden_size

    def time_steps(self, frames: int) -> int:
        """Temporal positions of a clip of ``frames`` frames in the output (frames / tubelet)."""
        return self.model.steps(frames)

    def stage_actions(self) -> dict[str, Callable[[], None]]:
        """``inflate``: re-initialise the temporal branches from the trained spatial ones."""
        return {"inflate": lambda: initialise_temporal_from_spatial(self.model)}

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        sequence = self.model(inputs["pixel_values"])
        return EncoderOutput(sequence, pool_tokens(sequence, self.pooling), None)

    export_class = "TimesformerModel"

    def save_config(self, directory: Path) -> None:
        """The `TimesformerConfig` (what `export_pretrained` writes, without weights)."""
        timesformer_config(self.model).save_pretrained(str(directory))

    def export_pretrained(self, directory: Path) -> None:
        """In `transformers`' `TimesformerModel` layout (`export_hf_timesformer`).

        Raises:
            ExportError: it embeds videos with a 3-D tubelet, which `TimesformerModel` has no
                place for.
        """
        tubelet = int(getattr(self.model, "tubelet", 1))
        if tubelet > 1:
            raise ExportError(
                f"its 3-D tubelet embedding ({tubelet} frames per patch) has no place in a "
                "TimesformerModel"
            )
        save_hf_model(export_hf_timesformer(self.model), directory)


def video_frames(ctx: BuildContext) -> int | None:
    """Frames per clip the data's video processor produces, if there is one."""
    video_config = getattr(ctx.processors.get("video"), "config", None)
    if video_config is not None and hasattr(video_config, "frames"):
        return int(video_config.frames)
    return None


def make_timesformer_encoder(config: TimeSformerSpec, ctx: BuildContext) -> TimeSformerEncoder:
    """Registry factory of the ``timesformer`` encoder: a `TimesformerModel` checkpoint loaded
    whole, or a ViT (checkpoint or random init) inflated."""
    from transformers import ViTModel  # lazily: only a spec that uses it loads it

    frames = config.num_frames or video_frames(ctx)
    if frames is not None and frames % config.tubelet:
        problem = (
            f"{frames} frames cannot be cut into tubelets of {config.tubelet}; set "
            f"data.video.frames (or num_frames) to a multiple of {config.tubelet}"
        )
        raise SpecError([(f"{component_path(config, ctx)}.tubelet", problem)])
    frames = frames // config.tubelet if frames is not None else None  # temporal positions
    if config.pretrained is not None and is_kept_component(config.pretrained):
        vit_config, kept_frames = kept_timesformer(config.pretrained, config.config)
        model = TimeSformer(ViTModel(vit_config, add_pooling_layer=False), kept_frames)
    elif config.pretrained is not None and is_timesformer_checkpoint(config.pretrained):
        saved = read_hf_timesformer(config, ctx)
        model = TimeSformer(
            ViTModel(saved.vit_config, add_pooling_layer=False), frames or saved.frames
        )
        load_hf_timesformer(model, saved, config, ctx, visual_size(ctx))
    else:
        vit = load_vit(config, ctx, image_size=visual_size(ctx), gradient_checkpointing=False)
        model = inflate_from_vit(vit, frames or 8)
    model.gradient_checkpointing = config.gradient_checkpointing
    if config.tubelet > 1:
        model.add_tubelet(config.tubelet, config.tubelet_init)
    return TimeSformerEncoder(model, config.pooling)


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``timesformer`` encoder."""
    registry.add_encoder(
        make_timesformer_encoder,
        TimeSformerSpec,
        description="divided space-time ViT for video and images, inflated from a ViT",
        modality=("video", "image"),
    )
