"""COTS instance loss, task-level KL and AMF (SPEC §B2, B9, B10) on a toy two-stream model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from modaloom.core.compose import FeatureCache, LoomModel
from modaloom.core.interfaces import Batch, Encoder, EncoderOutput
from modaloom.core.momentum import FeatureQueue
from modaloom.objectives.cots import (
    AMF_KEEP_KEY,
    COTSContrast,
    COTSContrastSpec,
    instance_queue_loss,
)

B, DIM, TAU = 4, 6, 0.05


class Toy(Encoder):
    """Mean of a linear map of ``inputs["x"]`` (B, N, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.output_dim = DIM
        self.linear = nn.Linear(3, DIM)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        sequence = self.linear(inputs["x"])
        return EncoderOutput(sequence, sequence.mean(dim=1), None)


def make(**fields: object) -> tuple[LoomModel, COTSContrast, FeatureQueue]:
    torch.manual_seed(0)
    config = COTSContrastSpec.model_validate({"queue_size": B, "embed_dim": DIM, **fields})
    components = {"vision": Toy(), "text": Toy()}
    online = {"a": components["vision"], "b": components["text"]}
    objective = COTSContrast(config, online, DIM, DIM, ("shared",), {"sim": 1})
    model = LoomModel(
        components, {"vision": ("image",), "text": ("text",)}, [("cots", 1.0, objective)]
    )
    queue = objective.queues["shared"]
    assert isinstance(queue, FeatureQueue)
    return model, objective, queue


def batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(B, dtype=torch.bool)
    return {
        "image": {"x": torch.randn(B, 2, 3, generator=g), "present": ones},
        "text": {"x": torch.randn(B, 3, 3, generator=g), "present": ones.clone()},
    }


def run(
    model: LoomModel, objective: COTSContrast, data: Batch
) -> tuple[dict[str, Tensor], FeatureCache]:
    features = FeatureCache(model, data)
    return objective(features), features


def test_instance_loss_is_the_cots_formula_and_task_waits_for_a_full_queue() -> None:
    model, objective, queue = make()
    qv, qt = queue.features("a"), queue.features("b")
    data = batch(0)
    v, t = objective.embed(FeatureCache(model, data))
    out, features = run(model, objective, data)
    # momentum copies equal the online modules before any update
    i2t = torch.cat([(v * t).sum(1, keepdim=True), v @ qt.T], 1) / TAU
    t2i = torch.cat([(t * v).sum(1, keepdim=True), t @ qv.T], 1) / TAU
    by_hand = (-F.log_softmax(i2t, 1)[:, 0] - F.log_softmax(t2i, 1)[:, 0]).mean()
    assert_close(out["inst_loss"], by_hand)
    assert_close(out["inst_loss"], instance_queue_loss(v, t, v, t, qv, qt, TAU).mean())
    assert out["task_loss"].item() == 0.0 and out["task_loss"].requires_grad  # queue not yet full
    assert features.shared[AMF_KEEP_KEY].all() and out["amf_kept"].item() == 1.0
    assert_close(queue.features("sim")[:, 0], (v * t).sum(1).detach())


def test_task_loss_is_symmetric_kl_once_the_queue_is_full() -> None:
    model, objective, queue = make(amf=False)
    run(model, objective, batch(0))  # fills the queue (size = B)
    qv, qt = queue.features("a"), queue.features("b")
    data = batch(1)
    v, t = objective.embed(FeatureCache(model, data))
    out, _ = run(model, objective, data)
    log_p = F.log_softmax(torch.cat([(v * t).sum(1, keepdim=True), v @ qt.T], 1) / TAU, 1)
    log_q = F.log_softmax(torch.cat([(t * v).sum(1, keepdim=True), t @ qv.T], 1) / TAU, 1)
    p, q = log_p.exp(), log_q.exp()
    kl = ((p * (log_p - log_q)).sum(1) + (q * (log_q - log_p)).sum(1)).mean()
    assert_close(out["task_loss"], kl)


def test_amf_keeps_pairs_above_mean_minus_two_std_of_the_similarity_queue() -> None:
    model, objective, queue = make(task_alignment=False)
    data = batch(0)
    run(model, objective, data)  # fill once
    v, t = objective.embed(FeatureCache(model, data))
    pair = (v * t).sum(1).detach()
    order = pair.argsort()
    # a similarity queue with mean m and population std 0.1 puts the threshold at m - 0.2
    threshold = (pair[order[1]] + pair[order[2]]) / 2
    mean = threshold + 0.2
    queue.sim_queue.copy_(torch.tensor([[mean - 0.1], [mean + 0.1], [mean - 0.1], [mean + 0.1]]))
    qv, qt = queue.features("a"), queue.features("b")
    out, features = run(model, objective, data)
    keep = pair > threshold
    assert features.shared[AMF_KEEP_KEY].tolist() == keep.tolist() and int(keep.sum()) == 2
    assert_close(out["amf_kept"], torch.tensor(0.5))
    kept = instance_queue_loss(v[keep], t[keep], v[keep], t[keep], qv, qt, TAU).mean()
    assert_close(out["inst_loss"], kept)
    assert int(queue.ptr) == 0 and int(queue.filled) == B  # the whole batch was enqueued again


def test_amf_filtering_everything_gives_a_zero_loss_with_graph_and_still_enqueues() -> None:
    model, objective, queue = make()
    run(model, objective, batch(0))
    queue.sim_queue.fill_(1.0)  # threshold 1.0: no cosine similarity exceeds it
    data = batch(1)
    v, t = objective.embed(FeatureCache(model, data))
    out, features = run(model, objective, data)
    assert not features.shared[AMF_KEEP_KEY].any() and out["amf_kept"].item() == 0.0
    total = out["inst_loss"] + out["task_loss"]
    assert total.item() == 0.0 and total.requires_grad
    total.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    assert_close(queue.features("a"), v.detach())  # momentum = online: the batch went in
    assert_close(queue.features("sim")[:, 0], (v * t).sum(1).detach())
