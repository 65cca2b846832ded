"""Tiny CPU configs the tests share: each built-in encoder's, decoder's and objective's own
entry, kept out of the production modules.

Registry-driven tests (tests/modalities/test_encoder_registry.py,
tests/objectives/test_objective_registry.py) take a component's entry from here by its
registered name. A third-party plugin, whose entry cannot live here, registers the same shapes
as ``registry.add(..., tiny={...}, requires={...})``; `tiny_entry` and `requires_entry` fall back
to those. A registered component with neither is a test failure, so nothing goes untested.
"""

from __future__ import annotations

from typing import Any

from modaloom.core.registry import Component

TINY_BERT: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
"""A CPU-sized BERT (the vocabulary size comes from the tokenizer)."""

TINY_VIT: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "image_size": 32,
}
"""A CPU-sized ViT over 32 x 32 images: 4 x 4 patches."""

TINY_CLIP_VISION: dict[str, Any] = dict(TINY_VIT)
"""A CPU-sized CLIP vision tower (same sizes as `TINY_VIT`)."""

TINY_AST: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 16,
    "frequency_stride": 16,
    "time_stride": 16,
    "num_mel_bins": 64,
    "max_length": 128,
}
"""A CPU-sized AST over 64 x 128 spectrograms: 4 x 8 patches, 34 tokens per clip."""

ENCODERS: dict[str, dict[str, Any]] = {
    "bert": {"config": TINY_BERT},
    "bert_decoder": {"config": TINY_BERT},
    "vit": {"config": TINY_VIT},
    "clip_vision": {"config": TINY_CLIP_VISION},
    "timesformer": {"config": TINY_VIT, "num_frames": 2},
    "frame_mean": {"config": TINY_VIT},
    "ast": {"config": TINY_AST, "inputs": {"audio": {"mel_bins": 64, "length": 128}}},
}
"""Each built-in encoder's and decoder's spec fields (minus ``type``), plus optional synthetic
input hints under ``inputs``."""

TINY_IMAGE_TEXT: dict[str, Any] = {
    "vision": {"type": "vit", "config": TINY_VIT},
    "text": {"type": "bert", "config": TINY_BERT},
}
"""Tiny components of an image-text objective."""

TINY_TEXT_DECODER: dict[str, Any] = {
    "text": {"type": "bert", "config": TINY_BERT},
    "decoder": {"type": "bert_decoder", "share_with": "text"},
}
"""A tiny text encoder and a decoder sharing with it."""

TINY_AV: dict[str, Any] = {
    "vision": {"type": "timesformer", "config": TINY_VIT, "num_frames": 2},
    "audio": {"type": "ast", "config": TINY_AST},
}
"""Tiny video and audio encoders."""

TINY_AV_TEXT: dict[str, Any] = {**TINY_AV, "text": {"type": "bert", "config": TINY_BERT}}
"""Tiny video, audio and text encoders."""

TINY_GROUPS: list[Any] = [["text", "vision"], ["text", "audio"], ["text", ["vision", "audio"]]]
"""VALOR's three modality groups."""

IMAGE_TEXT_BATCH: dict[str, Any] = {"components": TINY_IMAGE_TEXT, "batch": ["image", "text"]}

OBJECTIVES: dict[str, dict[str, Any]] = {
    "itc": {"tiny": {}, "requires": IMAGE_TEXT_BATCH},
    "itc_queue": {"tiny": {"queue_size": 8, "embed_dim": 16}, "requires": IMAGE_TEXT_BATCH},
    "univlc": {
        "tiny": {"queue_size": 8, "embed_dim": 16},
        "requires": {"components": TINY_IMAGE_TEXT, "batch": ["image", "text", "labels"]},
    },
    "cots_contrastive": {"tiny": {"queue_size": 4, "embed_dim": 16}, "requires": IMAGE_TEXT_BATCH},
    "itm": {
        "tiny": {},
        "requires": {
            "components": {
                **TINY_IMAGE_TEXT,
                "align": {"type": "bert_decoder", "share_with": "text"},
            },
            "batch": ["image", "text", "labels"],
        },
    },
    "lm": {
        "tiny": {"decoder": "decoder", "prompt": "a picture of"},
        "requires": {
            "components": {"vision": {"type": "vit", "config": TINY_VIT}, **TINY_TEXT_DECODER},
            "batch": ["image", "text"],
        },
    },
    "mgc": {
        "tiny": {"groups": TINY_GROUPS},
        "requires": {
            "components": {**TINY_AV, **TINY_TEXT_DECODER},
            "batch": ["video", "audio", "text"],
        },
    },
    "mga": {
        "tiny": {"groups": TINY_GROUPS, "embed_dim": 16, "chunk_size": 2},
        "requires": {"components": TINY_AV_TEXT, "batch": ["video", "audio", "text"]},
    },
    "mvlm": {
        "tiny": {"visual_tokenizer": {"type": "kmeans", "codes": 8}},
        "requires": IMAGE_TEXT_BATCH,
    },
    "vq_tokenizer": {
        "tiny": {},
        "requires": {
            **IMAGE_TEXT_BATCH,
            "objectives": [{"type": "mvlm", "visual_tokenizer": {"type": "vq", "codes": 8}}],
        },
    },
}
"""Each built-in objective's spec fields (``tiny``) and the components and batch fields of the
tiny model it trains in (``requires``; ``objectives``: others built before it, which it uses)."""

VISUAL_TOKENIZERS: dict[str, dict[str, Any]] = {
    "kmeans": {"codes": 8, "fit_steps": 2},
    "dvae": {"codes": 16, "hidden": 8, "blocks_per_group": 1},
    "vq": {"codes": 8, "dim": 4, "hidden": 8, "downsample": 2},
}
"""Each built-in visual tokenizer's spec fields (minus ``type``); a ``dvae`` test adds ``path``
(random weights saved in its layout)."""


def tiny_entry(component: Component) -> dict[str, Any] | None:
    """A component's tiny entry: from `ENCODERS`/`OBJECTIVES`, else its registered ``tiny``."""
    if component.kind == "visual_tokenizer" and component.name in VISUAL_TOKENIZERS:
        return dict(VISUAL_TOKENIZERS[component.name])
    table = OBJECTIVES if component.kind == "objective" else ENCODERS
    if component.name in table:
        entry = table[component.name]
        return dict(entry["tiny"]) if component.kind == "objective" else dict(entry)
    tiny = component.extra.get("tiny")
    return None if tiny is None else dict(tiny)


def requires_entry(component: Component) -> dict[str, Any] | None:
    """An objective's tiny model requirements, from `OBJECTIVES` or its registered ``requires``."""
    if component.name in OBJECTIVES:
        return dict(OBJECTIVES[component.name]["requires"])
    requires = component.extra.get("requires")
    return None if requires is None else dict(requires)
