"""ITC with a momentum queue and UniVLC against a transcription of SPEC §B2/B3."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from modaloom.core.compose import FeatureCache, LoomModel
from modaloom.core.interfaces import Batch, Encoder, EncoderOutput
from modaloom.core.momentum import FeatureQueue
from modaloom.objectives.momentum_contrast import SIMILARITY_KEY
from modaloom.objectives.queue_contrastive import ITCQueueSpec, QueueContrastive, UniVLCSpec

B, DIM = 4, 6


class Toy(Encoder):
    """Mean of a linear map of ``inputs["x"]`` (B, N, 3)."""

    def __init__(self, modality: str) -> None:
        super().__init__()
        self.modality, self.output_dim = modality, DIM
        self.linear = nn.Linear(3, DIM)

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        sequence = self.linear(inputs["x"])
        return EncoderOutput(sequence, sequence.mean(dim=1), None)


def make(config: ITCQueueSpec | UniVLCSpec, keys: tuple[str, ...] = ("shared",)) -> LoomModel:
    torch.manual_seed(0)
    components = {"vision": Toy("image"), "text": Toy("text")}
    online = {"a": components["vision"], "b": components["text"]}
    objective = QueueContrastive(config, online, DIM, DIM, keys)
    inputs = {"vision": ("video", "image"), "text": ("text",)}
    return LoomModel(components, inputs, [(config.type, 1.0, objective)])


def batch(seed: int, field: str = "image", labels: list[int] | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(B, dtype=torch.bool)
    out: Batch = {
        field: {"x": torch.randn(B, 2, 3, generator=g), "present": ones},
        "text": {"x": torch.randn(B, 3, 3, generator=g), "present": ones.clone()},
    }
    if labels is not None:
        out["labels"] = torch.tensor(labels)
    return out


def objective_of(model: LoomModel) -> QueueContrastive:
    objective = model.objectives[0]
    assert isinstance(objective, QueueContrastive)
    return objective


def queue_of(model: LoomModel, key: str = "shared") -> FeatureQueue:
    queue = objective_of(model).queues[key]
    assert isinstance(queue, FeatureQueue)
    return queue


def embeddings(model: LoomModel, data: Batch) -> tuple[Tensor, Tensor]:
    objective = objective_of(model)
    features = FeatureCache(model, data)
    return objective.embed(features)


def blip_loss(
    v: Tensor, t: Tensor, qv: Tensor, qt: Tensor, positives: Tensor, alpha: float, tau: float
) -> Tensor:
    """BLIP's ITC-with-queue, transcribed; momentum = online at the first step."""
    cand_t, cand_v = torch.cat([t, qt]), torch.cat([v, qv])
    hard = positives.float() / positives.float().sum(1, keepdim=True)
    losses = []
    for x, cand in ((v, cand_t), (t, cand_v)):
        logits = x @ cand.T / tau
        targets = alpha * F.softmax(logits.detach(), dim=1) + (1 - alpha) * hard
        losses.append(-(targets * F.log_softmax(logits, dim=1)).sum(1).mean())
    return (losses[0] + losses[1]) / 2


def test_itc_queue_loss_matches_blip_and_enqueues_after_the_loss() -> None:
    config = ITCQueueSpec(queue_size=8, embed_dim=DIM, alpha=0.4, temperature=0.1)
    model = make(config)
    queue = queue_of(model)
    qv, qt = queue.features("a"), queue.features("b")
    data = batch(0)
    v, t = embeddings(model, data)
    positives = torch.eye(B, B + 8, dtype=torch.bool)
    expected = blip_loss(v, t, qv, qt, positives, 0.4, 0.1)
    out = model(data)
    assert_close(out.terms["itc_queue/itc_loss"], expected.detach())
    # the batch's momentum features (= online ones before any update) were written after
    assert_close(queue.features("a")[:B], v.detach())
    assert_close(queue.features("b")[:B], t.detach())
    assert_close(queue.features("a")[B:], qv[B:])
    assert int(queue.ptr) == B and int(queue.filled) == B


def test_queue_wraps_around_and_skips_absent_samples() -> None:
    model = make(ITCQueueSpec(queue_size=6, embed_dim=DIM))
    queue = queue_of(model)
    model(batch(0))
    second = batch(1)
    second["text"]["present"] = torch.tensor([True, True, False, True])
    v, _ = embeddings(model, second)
    model(second)
    kept = v.detach()[[0, 1, 3]]
    assert int(queue.ptr) == (4 + 3) % 6 and int(queue.filled) == 6
    assert_close(queue.features("a")[[4, 5, 0]], kept)


def test_after_optimizer_step_moves_momentum_copies_by_ema() -> None:
    model = make(ITCQueueSpec(queue_size=8, embed_dim=DIM, momentum=0.9))
    objective = objective_of(model)
    model(batch(0))
    online = dict(model.components["vision"].named_parameters())
    before = {k: v.clone() for k, v in objective.momentum["a"].named_parameters()}
    proj_before = objective.momentum["proj_a"].weight.clone()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    model.after_optimizer_step()
    for name, hat in objective.momentum["a"].named_parameters():
        assert_close(hat, 0.9 * before[name] + 0.1 * online[name])
    assert_close(
        objective.momentum["proj_a"].weight, 0.9 * proj_before + 0.1 * objective.proj_a.weight
    )


def test_univlc_uses_same_label_positives_over_batch_and_queue() -> None:
    config = UniVLCSpec(queue_size=8, embed_dim=DIM, alpha=0.0, temperature=0.1)
    model = make(config)
    queue = queue_of(model)
    first = batch(0, labels=[3, -1, 5, -1])
    model(first)  # fills queue rows 0..3 with labels [3, -1, 5, -1]
    assert queue.queued_labels()[:4].tolist() == [3, -1, 5, -1]
    qv, qt = queue.features("a"), queue.features("b")
    data = batch(1, labels=[3, 3, -1, 5])
    v, t = embeddings(model, data)
    # momentum copies equal the online modules (no optimizer step was taken)
    labels = torch.tensor([3, 3, -1, 5])
    queue_labels = torch.tensor([3, -1, 5, -1, -1, -1, -1, -1])
    every = torch.cat([labels, queue_labels])
    positives = (labels[:, None] == every[None]) & (labels[:, None] >= 0)
    positives |= torch.eye(B, B + 8, dtype=torch.bool)
    expected = blip_loss(v, t, qv, qt, positives, 0.0, 0.1)
    out = model(data)
    assert_close(out.terms["univlc/itc_loss"], expected.detach())


def test_univlc_keeps_one_queue_per_visual_field() -> None:
    model = make(UniVLCSpec(queue_size=8, embed_dim=DIM), keys=("video", "image"))
    image_queue, video_queue = queue_of(model, "image"), queue_of(model, "video")
    model(batch(0, field="image", labels=[0, 1, -1, -1]))
    assert int(image_queue.filled) == B and int(video_queue.filled) == 0
    model(batch(1, field="video", labels=[2, 2, -1, -1]))
    assert int(image_queue.filled) == B and int(video_queue.filled) == B
    assert video_queue.queued_labels()[:4].tolist() == [2, 2, -1, -1]


def test_similarity_is_shared_for_itm_and_no_pair_gives_zero_loss() -> None:
    model = make(ITCQueueSpec(queue_size=8, embed_dim=DIM, temperature=0.1))
    data = batch(0)
    features = FeatureCache(model, data)
    out = objective_of(model)(features)
    v, t = embeddings(model, data)
    assert_close(features.shared[SIMILARITY_KEY][("vision", "text")], (v @ t.T / 0.1).detach())
    assert out["itc_loss"].requires_grad
    data["text"]["present"] = torch.zeros(B, dtype=torch.bool)
    out = objective_of(model)(FeatureCache(model, data))
    assert out["itc_loss"].item() == 0.0 and out["itc_loss"].requires_grad


def test_alpha_ramps_over_the_first_optimizer_steps_and_is_checkpointed() -> None:
    config = ITCQueueSpec(queue_size=8, embed_dim=DIM, alpha=0.4, alpha_ramp_steps=4)
    model = make(config)
    objective = objective_of(model)
    queue = queue_of(model)
    v, t = embeddings(model, batch(0))
    positives = torch.eye(B, B + 8, dtype=torch.bool)
    hard_targets = blip_loss(v, t, queue.features("a"), queue.features("b"), positives, 0.0, 0.07)
    seen, losses = [], []
    for step in range(6):
        out = model(batch(step))
        losses.append(out.terms["itc_queue/itc_loss"])
        seen.append(round(float(out.terms["itc_queue/alpha"]), 6))
        model.after_optimizer_step()
    assert seen == [0.0, 0.1, 0.2, 0.3, 0.4, 0.4]
    assert_close(losses[0], hard_targets.detach())  # step 0 distils nothing (alpha 0)
    assert int(model.state_dict()["objectives.0.optimizer_steps"]) == 6
    assert objective.alpha() == 0.4
    plain = make(ITCQueueSpec(queue_size=8, embed_dim=DIM, alpha=0.4))
    assert not any("optimizer_steps" in key for key in plain.state_dict())  # keys unchanged
    assert "itc_queue/alpha" not in plain(batch(0)).terms
