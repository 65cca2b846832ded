"""Audio encoder: the Audio Spectrogram Transformer (AST) from `transformers`, per clip (VALOR).

The audio processor yields ``{"spectrogram": (B, N, M, L)}``: N clips of M mel bins by L frames
(mel-major). `ASTModel` reads ``(batch, L, M)`` (time-major), so each clip is transposed and the
N clips of a sample are encoded as a batch of B*N; their token sequences are concatenated and
their pooled features averaged (SPEC §A2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ASTConfig

from modaloom.core.compose import BuildContext
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import Encoder, EncoderOutput
from modaloom.core.registry import Registry
from modaloom.modalities.hf import (
    HFEncoderSpec,
    Pooling,
    load_hf_model,
    log_resize,
    pool_tokens,
    save_hf_config,
    save_hf_model,
)

if TYPE_CHECKING:
    from transformers import ASTModel

__all__ = ["ASTEncoder", "ASTEncoderSpec", "load_ast", "resize_ast_positions"]

DEFAULT_MEL_BINS, DEFAULT_LENGTH = 64, 512
"""VALOR's spectrogram shape: 64 mel bins by 512 frames (5 s at a 10 ms hop)."""


class ASTEncoderSpec(HFEncoderSpec):
    """An AST audio encoder: `transformers`' `ASTModel` and `ASTConfig` (``model.components.*``).

    ``config.num_mel_bins`` and ``config.max_length`` default to ``data.audio.mel_bins`` and
    ``data.audio.target_length`` (64 and 512 without an audio spec). A ``pretrained`` checkpoint
    whose spectrogram shape differs from those gets its position embeddings resized by
    interpolation (`resize_ast_positions`).
    """

    type: Literal["ast"] = "ast"
    hf_config = ASTConfig
    pooling: Pooling = "cls"
    """Per-clip feature: AST's mean of the [CLS] and distillation tokens, or the mean of the
    patch tokens."""


class ASTEncoder(Encoder):
    """AST over ``{"spectrogram": (B, N, M, L)}`` (a single clip may come as (B, M, L)).

    Returns sequence (B, N*S, D) (clip by clip; clip n's tokens are ``[n*S, (n+1)*S)``, each
    starting with its [CLS] and distillation tokens), pooled (B, D) = the mean over clips of the
    per-clip feature, and no mask.

    Attributes:
        tokens_per_clip: S = 2 + number of spectrogram patches.
    """

    modality = "audio"

    def __init__(self, ast: ASTModel, pooling: str = "cls") -> None:
        super().__init__()
        self.ast = ast
        self.pooling = pooling
        self.output_dim = int(ast.config.hidden_size)
        freq, time = ast.embeddings.get_shape(ast.config)
        self.tokens_per_clip = 2 + freq * time

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        spectrogram = inputs["spectrogram"]
        if spectrogram.ndim == 3:
            spectrogram = spectrogram.unsqueeze(1)
        batch, clips, mel_bins, length = spectrogram.shape
        config = self.ast.config
        if (mel_bins, length) != (config.num_mel_bins, config.max_length):
            raise ValueError(
                f"AST expects spectrograms of {config.num_mel_bins} mel bins x {config.max_length} "
                f"frames, got {mel_bins} x {length}; set the encoder's config.num_mel_bins and "
                "config.max_length (or data.audio.mel_bins / target_length) to match"
            )
        dtype = self.ast.embeddings.patch_embeddings.projection.weight.dtype
        values = spectrogram.flatten(0, 1).transpose(1, 2).to(dtype)  # (B*N, L, M)
        output = self.ast(input_values=values)
        tokens = output.last_hidden_state  # (B*N, S, D)
        per_clip = (
            output.pooler_output if self.pooling == "cls" else pool_tokens(tokens, "mean", skip=2)
        )
        sequence = tokens.unflatten(0, (batch, clips)).flatten(1, 2)
        pooled = per_clip.unflatten(0, (batch, clips)).mean(dim=1)
        return EncoderOutput(sequence, pooled, None)

    export_class = "ASTModel"

    def save_config(self, directory: Path) -> None:
        save_hf_config(self.ast, directory)

    def export_pretrained(self, directory: Path) -> None:
        save_hf_model(self.ast, directory)


def resize_ast_positions(ast: ASTModel, num_mel_bins: int, max_length: int) -> None:
    """Resize AST's position embeddings, in place, to another spectrogram shape.

    The patch positions form a (frequency, time) grid that is resized bilinearly; the [CLS] and
    distillation positions are kept. ``ast.config`` is updated to the new shape.

    Args:
        ast: the model.
        num_mel_bins: M of the new spectrograms.
        max_length: L of the new spectrograms.
    """
    config = ast.config
    old_freq, old_time = ast.embeddings.get_shape(config)
    config.num_mel_bins, config.max_length = num_mel_bins, max_length
    freq, time = ast.embeddings.get_shape(config)
    if (freq, time) == (old_freq, old_time):
        return
    positions = ast.embeddings.position_embeddings.detach()  # (1, 2 + F*T, D)
    grid = positions[:, 2:].unflatten(1, (old_freq, old_time)).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(freq, time), mode="bilinear", align_corners=False)
    patches = grid.to(positions.dtype).permute(0, 2, 3, 1).flatten(1, 2)
    ast.embeddings.position_embeddings = nn.Parameter(torch.cat([positions[:, :2], patches], 1))


def _audio_shape(ctx: BuildContext) -> tuple[int, int] | None:
    """(mel bins, frames) the data's audio processor produces, if there is one."""
    config = getattr(ctx.processors.get("audio"), "config", None)
    if config is None or not hasattr(config, "mel_bins"):
        return None
    return int(config.mel_bins), int(config.target_length)


def load_ast(config: ASTEncoderSpec, ctx: BuildContext) -> ASTModel:
    """An `ASTModel` from ``pretrained`` or from a config, shaped to the data's spectrograms."""
    from transformers import ASTModel  # lazily: only a spec that uses it loads it

    data_shape = _audio_shape(ctx)
    if config.pretrained is None:
        mel_bins, length = data_shape or (DEFAULT_MEL_BINS, DEFAULT_LENGTH)
        defaults = {"num_mel_bins": mel_bins, "max_length": length}
        return load_hf_model(ASTModel, ASTConfig, config, ctx, defaults=defaults)
    overrides = dict(config.config)
    shape = overrides.pop("num_mel_bins", None), overrides.pop("max_length", None)
    ast = load_hf_model(
        ASTModel, ASTConfig, config, ctx, overrides=overrides, unused=(r"classifier\.",)
    )
    default = data_shape or (ast.config.num_mel_bins, ast.config.max_length)
    trained = ast.embeddings.get_shape(ast.config)
    resize_ast_positions(ast, shape[0] or default[0], shape[1] or default[1])
    resized = ast.embeddings.get_shape(ast.config)
    if resized != trained:
        log_resize(
            config,
            ctx,
            f"position embeddings for {trained[0]}x{trained[1]} patches are interpolated "
            f"(bilinear) to {resized[0]}x{resized[1]} patches for spectrograms of "
            f"{ast.config.num_mel_bins} mel bins x {ast.config.max_length} frames",
        )
    return ast


def make_ast_encoder(config: ASTEncoderSpec, ctx: BuildContext) -> ASTEncoder:
    """Registry factory of the ``ast`` encoder."""
    return ASTEncoder(load_ast(config, ctx), config.pooling)


@hookimpl
def modaloom_register_modalities(registry: Registry) -> None:
    """Register the ``ast`` audio encoder."""
    registry.add_encoder(
        make_ast_encoder,
        ASTEncoderSpec,
        description="Audio Spectrogram Transformer over log-Mel clips (transformers)",
        modality="audio",
    )
