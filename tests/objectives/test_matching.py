"""ITM with hard negatives (SPEC §B4) on a tiny ViT + BERT + alignment decoder."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from modaloom.core.compose import FeatureCache, LoomModel, build_model
from modaloom.core.interfaces import Batch
from modaloom.core.plugins import load_plugins
from modaloom.modalities.text import TextProcessor, train_wordpiece
from modaloom.modalities.text_decoder import BertTextDecoder
from modaloom.objectives.matching import ITM, itm_hard_negatives
from modaloom.objectives.momentum_contrast import SIMILARITY_KEY
from modaloom.tests.tiny import TINY_BERT, TINY_VIT

REGISTRY = load_plugins(entry_points=False)
CAPTIONS = ["a red square", "a blue circle on the left", "two green triangles", "a yellow circle"]
PROCESSOR = TextProcessor(train_wordpiece(CAPTIONS * 4, vocab_size=120), max_length=16)
B = len(CAPTIONS)


def build(*objectives: dict[str, Any]) -> LoomModel:
    torch.manual_seed(0)
    fields = {
        "vision": {"type": "vit", "config": TINY_VIT},
        "text": {"type": "bert", "config": TINY_BERT},
        "align": {"type": "bert_decoder", "share_with": "text"},
    }
    components = {}
    for name, spec in fields.items():
        kind = "decoder" if spec["type"] == "bert_decoder" else "encoder"
        config = REGISTRY.get(kind, spec["type"]).config
        assert config is not None
        components[name] = config.model_validate(spec)
    specs = []
    for spec in objectives:
        config = REGISTRY.get("objective", spec["type"]).config
        assert config is not None
        specs.append(config.model_validate(spec))
    model_spec = SimpleNamespace(components=components, objectives=specs)
    model = build_model(model_spec, REGISTRY, {"text": PROCESSOR})
    return model.eval()  # no dropout: the only randomness left is the negative sampling


def batch(labels: list[int], present: list[bool] | None = None) -> Batch:
    g = torch.Generator().manual_seed(0)
    items = [PROCESSOR.process(c, key="k", train=False, rng=random.Random(0)) for c in CAPTIONS]
    text = PROCESSOR.collate(list(items))
    mask = torch.tensor(present or [True] * B)
    text["present"] = mask
    image = {"pixel_values": torch.randn(B, 3, 32, 32, generator=g), "present": mask.clone()}
    return {"text": text, "image": image, "labels": torch.tensor(labels)}


def itm_of(model: LoomModel) -> ITM:
    objective = model.objectives[-1]
    assert isinstance(objective, ITM)
    return objective


def record_decoder(model: LoomModel, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    decoder = model.components["align"]
    assert isinstance(decoder, BertTextDecoder)
    calls: list[dict[str, Any]] = []
    original = decoder.hidden_states

    def recording(*args: Any, **kwargs: Any) -> Tensor:
        calls.append({"args": args, "kwargs": kwargs})
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "hidden_states", recording)
    return calls


def test_itm_loss_is_b_positives_and_2b_sampled_negatives(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build({"type": "itm"})
    itm = itm_of(model)
    calls = record_decoder(model, monkeypatch)
    data = batch([-1, -1, -1, -1])
    features = FeatureCache(model, data)
    sim_v2t = torch.randn(B, B, generator=torch.Generator().manual_seed(1))
    features.shared[SIMILARITY_KEY] = {("vision", "text"): sim_v2t}
    torch.manual_seed(5)
    out = itm(features)
    assert out["hard_negatives"].item() == 1.0 and out["negatives"].item() == 2 * B
    # transcription of SPEC B4 with the same random draws
    torch.manual_seed(5)
    eye = torch.eye(B, dtype=torch.bool)
    neg_visual, neg_text = itm_hard_negatives(sim_v2t.T, sim_v2t, eye)
    enc = PROCESSOR.token_id("[ENC]")
    ids = data["text"]["input_ids"].clone()
    ids[:, 0] = enc
    mask = data["text"]["attention_mask"]
    visual = features["vision"].sequence
    arange = torch.arange(B)
    text_rows = torch.cat([arange, arange, neg_text])
    visual_rows = torch.cat([arange, neg_visual, arange])
    decoder = model.components["align"]
    hidden = decoder.hidden_states(
        ids[text_rows], mask[text_rows], visual[visual_rows], None, mode="bidirectional"
    )
    targets = torch.tensor([1] * B + [0] * (2 * B))
    assert_close(out["itm_loss"], F.cross_entropy(itm.head(hidden[:, 0]), targets))
    first = calls[0]
    assert (first["args"][0][:, 0] == enc).all() and first["kwargs"]["mode"] == "bidirectional"


def test_same_pair_and_same_label_are_never_negatives() -> None:
    model = build({"type": "itm"})
    labels = torch.tensor([0, 0, 1, 1])
    features = FeatureCache(model, batch(labels.tolist()))
    same = labels[:, None] == labels[None, :]
    # similarities that would almost always pick the same pair or the same label if allowed
    features.shared[SIMILARITY_KEY] = {("vision", "text"): same.float() * 50.0}
    rows = torch.arange(B)
    for seed in range(50):
        torch.manual_seed(seed)
        text_index, visual_index, hard = itm_of(model).sample_pairs(features, rows)
        assert hard and text_index.numel() == 3 * B
        assert torch.equal(text_index[:B], rows) and torch.equal(visual_index[:B], rows)
        assert (labels[text_index[B:]] != labels[visual_index[B:]]).all()


def test_all_same_label_batch_and_single_pair_give_zero_loss_with_graph() -> None:
    model = build({"type": "itm"})
    for data in (batch([2, 2, 2, 2]), batch([-1] * B, present=[False, True, False, False])):
        out = itm_of(model)(FeatureCache(model, data))
        assert out["itm_loss"].item() == 0.0 and out["itm_loss"].requires_grad
        assert out["negatives"].item() == 0.0
        out["itm_loss"].backward()


def test_similarities_come_from_an_earlier_contrastive_objective() -> None:
    data = batch([-1] * B)
    alone = build({"type": "itm"})
    assert alone(data).terms["itm/hard_negatives"].item() == 0.0
    with_itc = build({"type": "itc", "embed_dim": 8}, {"type": "itm"})
    assert with_itc(data).terms["itm/hard_negatives"].item() == 1.0
    with_queue = build({"type": "univlc", "embed_dim": 8, "queue_size": 8}, {"type": "itm"})
    out = with_queue(batch([0, 0, 1, -1]))
    assert out.terms["itm/hard_negatives"].item() == 1.0
    out.loss.backward()  # reading ITC's temperature must not break its backward pass
    assert torch.isfinite(out.loss)


# ------------------------------------------------- negatives from every rank (2 gloo processes)

RANK_LABELS = ([0, 0, 0, 0], [1, 1, 1, 1])  # no allowed negative inside either local batch


def _rank_worker(local_rank: int, port: int, directory: str, mode: str) -> None:
    """One of two gloo processes: ITM (after ITC) on a one-label batch per rank."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=local_rank, world_size=2
    )
    try:
        model = build({"type": "itc", "embed_dim": 8}, {"type": "itm", "negatives_from": mode})
        data = batch(RANK_LABELS[local_rank])
        data["image"]["pixel_values"] += 10.0 * local_rank  # tell the ranks' images apart
        seen: list[Tensor] = []
        itm = itm_of(model)
        original = itm.match_logits

        def recording(*args: Any) -> Tensor:
            seen.append(args[3].detach())  # (n, N, D) visual tokens of every scored pair
            return original(*args)

        itm.match_logits = recording  # type: ignore[method-assign]
        features = FeatureCache(model, data)
        out = itm(features)
        out["itm_loss"].backward()
        vision_grad = sum(
            p.grad.abs().sum()
            for p in model.components["vision"].parameters()
            if p.grad is not None
        )
        torch.save(
            {
                "negatives": out["negatives"].item(),
                "loss": out["itm_loss"].item(),
                "visual": seen[0] if seen else None,
                "own": features["vision"].sequence.detach(),
                "vision_grad": float(vision_grad),
            },
            f"{directory}/rank{local_rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _run_two_ranks(tmp_path: Any, mode: str) -> list[dict[str, Any]]:
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(port), mode],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


def test_negatives_from_all_ranks_come_from_the_other_process(tmp_path: Any) -> None:
    """Each rank's batch has one label, so it has no negative of its own (see
    `test_all_same_label_batch_and_single_pair_give_zero_loss_with_graph`); with
    ``negatives_from: all_ranks`` every text and every visual sample gets one from the other
    process, and the backward pass (which all-reduces the gathered tokens' gradient) completes."""
    world = _run_two_ranks(tmp_path, "all_ranks")
    for me, other in ((world[0], world[1]), (world[1], world[0])):
        assert me["negatives"] == 2 * B and torch.isfinite(torch.tensor(me["loss"]))
        assert_close(me["visual"][:B], me["own"])  # positives: the local pairs
        for tokens in me["visual"][B : 2 * B]:  # a negative visual sample for each text
            assert any(torch.equal(tokens, row) for row in other["own"])
        assert me["vision_grad"] > 0.0


if __name__ == "__main__":
    import sys

    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(int(sys.argv[2]), sys.argv[1], sys.argv[3]), nprocs=2, join=True)
