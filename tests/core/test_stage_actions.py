"""Stage actions reach the momentum copies: ``vision.inflate`` inflates the EMA encoder too."""

from __future__ import annotations

import torch

from modaloom.core.compose import build_model
from modaloom.core.data import build_processors
from modaloom.core.momentum import MomentumCopy
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.core.stage_actions import stage_actions
from modaloom.tests.tiny import TINY_BERT, TINY_VIT


def test_inflate_also_inflates_the_momentum_copy(registry: Registry) -> None:
    tree = {
        "model": {
            "components": {
                "text": {"type": "bert", "config": TINY_BERT},
                "vision": {"type": "timesformer", "config": TINY_VIT, "num_frames": 2},
            },
            "objectives": [{"type": "itc_queue", "a": "vision", "b": "text", "queue_size": 8}],
        },
        "data": {"sources": {"train": {"type": "jsonl", "path": "train.jsonl"}}},
        "train": {
            "stages": [
                {"name": "image", "steps": 1},
                {"name": "joint", "steps": 1, "actions": ["vision.inflate"]},
            ]
        },
    }
    spec = load_spec(tree, registry=registry)
    model = build_model(spec.model, registry, build_processors(spec.data, registry, {}, None))
    momentum = model.objectives[0].momentum
    assert isinstance(momentum, MomentumCopy)
    online, ema = model.components["vision"].model, momentum["a"].model
    with torch.no_grad():  # stage 1 moved the EMA's spatial weights away from the online ones
        for parameter in ema.parameters():
            parameter.add_(torch.randn_like(parameter))
    (inflate,) = stage_actions(model, spec.train.stages[1], 1)
    inflate()
    for net in (online, ema):
        for layer, temporal in zip(net.vit.layers, net.temporal, strict=True):
            spatial = layer.attention.state_dict()
            for key, value in temporal.attention.state_dict().items():
                assert torch.equal(value, spatial[key]), key
            assert not temporal.temporal_fc.weight.any() and not temporal.temporal_fc.bias.any()
        assert not net.time_embed.any()
    online_q = online.temporal[0].attention.state_dict()
    ema_q = ema.temporal[0].attention.state_dict()
    assert not all(torch.equal(online_q[k], ema_q[k]) for k in online_q)  # from its own weights
