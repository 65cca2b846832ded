"""AST audio encoder: clip layout, mel-major to time-major input, checkpoints, shape defaults."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import ASTConfig, ASTModel

from modaloom.core.compose import BuildContext
from modaloom.core.plugins import load_plugins
from modaloom.modalities.audio import AudioProcessor, AudioSpec
from modaloom.modalities.audio_encoder import ASTEncoder
from modaloom.tests.tiny import TINY_AST

REGISTRY = load_plugins(entry_points=False)
TOKENS = 2 + 4 * 8  # [CLS], distillation, 4 frequency x 8 time patches of a 64 x 128 clip


def build(fields: dict[str, Any], ctx: BuildContext | None = None) -> Any:
    entry = REGISTRY.get("encoder", fields["type"])
    assert entry.config is not None and entry.factory is not None
    spec = entry.config.model_validate(fields)
    module = entry.factory(spec, ctx or BuildContext(REGISTRY))
    return module


@pytest.fixture
def encoder() -> ASTEncoder:
    torch.manual_seed(0)
    module = build({"type": "ast", "config": TINY_AST}).eval()
    assert isinstance(module, ASTEncoder)
    return module


def test_clips_are_encoded_separately_and_concatenated(encoder: ASTEncoder) -> None:
    """Clip n of the sequence is ASTModel on that clip, transposed to (time, mel) as AST reads."""
    spectrogram = torch.randn(2, 3, 64, 128)  # (B, N, mel, time), as the audio processor yields
    output = encoder({"spectrogram": spectrogram})
    assert encoder.tokens_per_clip == TOKENS
    assert output.sequence.shape == (2, 3 * TOKENS, 32) and output.mask is None
    pooled = []
    for clip in range(3):
        time_major = spectrogram[:, clip].permute(0, 2, 1)  # (B, 128, 64)
        reference = encoder.ast(input_values=time_major)
        chunk = output.sequence[:, clip * TOKENS : (clip + 1) * TOKENS]
        torch.testing.assert_close(chunk, reference.last_hidden_state)
        pooled.append(reference.pooler_output)
    torch.testing.assert_close(output.pooled, torch.stack(pooled, dim=1).mean(dim=1))


def test_pooled_clip_feature_is_the_mean_of_cls_and_distillation_tokens(
    encoder: ASTEncoder,
) -> None:
    output = encoder({"spectrogram": torch.randn(2, 1, 64, 128)})
    torch.testing.assert_close(output.pooled, (output.sequence[:, 0] + output.sequence[:, 1]) / 2)


def test_a_spectrogram_of_the_wrong_shape_is_a_clear_error(encoder: ASTEncoder) -> None:
    with pytest.raises(ValueError, match="AST expects spectrograms of 64 mel bins x 128 frames"):
        encoder({"spectrogram": torch.randn(1, 1, 128, 64)})


def test_the_audio_processor_sets_the_default_spectrogram_shape() -> None:
    processor = AudioProcessor(AudioSpec(mel_bins=64, target_length=96))
    fields = {k: v for k, v in TINY_AST.items() if k not in ("num_mel_bins", "max_length")}
    ctx = BuildContext(REGISTRY, processors={"audio": processor})
    encoder = build({"type": "ast", "config": fields}, ctx)
    assert (encoder.ast.config.num_mel_bins, encoder.ast.config.max_length) == (64, 96)
    assert encoder({"spectrogram": torch.randn(1, 2, 64, 96)}).sequence.shape == (1, 2 * 26, 32)


def test_ast_loads_a_pretrained_directory(tmp_path: Path) -> None:
    saved = ASTModel(ASTConfig(**TINY_AST))
    saved.save_pretrained(tmp_path)
    encoder = build({"type": "ast", "pretrained": str(tmp_path)})
    loaded = encoder.ast.state_dict()
    assert loaded.keys() == saved.state_dict().keys()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded[name], tensor), name


def test_a_checkpoint_for_other_lengths_gets_resized_positions_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saved = ASTModel(ASTConfig(**TINY_AST))
    with torch.no_grad():
        saved.embeddings.position_embeddings.normal_()
    saved.save_pretrained(tmp_path)
    fields = {"type": "ast", "pretrained": str(tmp_path), "config": {"max_length": 256}}
    with caplog.at_level(logging.WARNING):
        encoder = build(fields)
    assert [record.getMessage() for record in caplog.records] == [
        f"model.components.<ast>.pretrained {str(tmp_path)!r}: position embeddings for 4x8 "
        "patches are interpolated (bilinear) to 4x16 patches for spectrograms of 64 mel bins x "
        "256 frames"
    ]
    positions = encoder.ast.embeddings.position_embeddings
    assert positions.shape == (1, 2 + 4 * 16, 32)
    torch.testing.assert_close(positions[:, :2], saved.embeddings.position_embeddings[:, :2])
    output = encoder({"spectrogram": torch.randn(1, 1, 64, 256)})
    assert output.sequence.shape == (1, 2 + 4 * 16, 32)
