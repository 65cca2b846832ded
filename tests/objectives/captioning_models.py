"""Tiny decoder models and caption batches that the ``lm`` and ``mgc`` tests share."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import torch

from modaloom.core.compose import LoomModel, build_model
from modaloom.core.interfaces import Batch
from modaloom.core.plugins import load_plugins
from modaloom.modalities.text import TextProcessor, train_wordpiece
from modaloom.tests.tiny import TINY_AST, TINY_BERT, TINY_VIT

REGISTRY = load_plugins(entry_points=False)
CAPTIONS = ["a red square", "a blue circle on the left", "two green triangles", "a yellow circle"]
PROCESSOR = TextProcessor(train_wordpiece(CAPTIONS * 4, vocab_size=120), max_length=16)
B = len(CAPTIONS)
GROUPS = [["text", "vision"], ["text", "audio"], ["text", ["vision", "audio"]]]
COMPONENTS: dict[str, Any] = {
    "text": {"type": "bert", "config": TINY_BERT},
    "decoder": {"type": "bert_decoder", "share_with": "text"},
    "image": {"type": "vit", "config": TINY_VIT},
    "vision": {"type": "timesformer", "config": TINY_VIT, "num_frames": 2},
    "audio": {"type": "ast", "config": TINY_AST},
}


def build(objective: dict[str, Any], components: tuple[str, ...]) -> LoomModel:
    torch.manual_seed(0)
    specs = {}
    for name in components:
        fields = COMPONENTS[name]
        kind = "decoder" if fields["type"] == "bert_decoder" else "encoder"
        config = REGISTRY.get(kind, fields["type"]).config
        assert config is not None
        specs[name] = config.model_validate(fields)
    objective_config = REGISTRY.get("objective", objective["type"]).config
    assert objective_config is not None
    model_spec = SimpleNamespace(
        components=specs, objectives=[objective_config.model_validate(objective)]
    )
    return build_model(model_spec, REGISTRY, {"text": PROCESSOR}).eval()


def batch(*fields: str, missing_audio: int | None = None) -> Batch:
    g = torch.Generator().manual_seed(0)
    items = [PROCESSOR.process(c, key="k", train=False, rng=random.Random(0)) for c in CAPTIONS]
    out: Batch = {"text": PROCESSOR.collate(list(items))}
    ones = torch.ones(B, dtype=torch.bool)
    if "image" in fields:
        out["image"] = {"pixel_values": torch.randn(B, 3, 32, 32, generator=g), "present": ones}
    if "video" in fields:
        video = torch.randn(B, 2, 3, 32, 32, generator=g)
        out["video"] = {"pixel_values": video, "present": ones.clone()}
    if "audio" in fields:
        present = ones.clone()
        if missing_audio is not None:
            present[missing_audio] = False
        spectrogram = torch.randn(B, 1, 64, 128, generator=g)
        out["audio"] = {"spectrogram": spectrogram, "present": present}
    return out
