"""VALOR's MGA (SPEC §B7): frame features, and the loss against a loop transcription."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from modaloom.core.compose import BuildContext, FeatureCache, LoomModel
from modaloom.core.interfaces import Batch, Encoder, EncoderOutput
from modaloom.core.plugins import load_plugins
from modaloom.objectives.contrastive import contrastive_loss
from modaloom.objectives.fine_grained import (
    MGA,
    MGASpec,
    frame_features,
    make_mga,
    similarity_contrastive_loss,
)
from modaloom.objectives.fine_grained_similarity import (
    fine_grained_similarity,
    group_similarity,
    join,
)

B, D = 4, 5


class Toy(Encoder):
    """A linear map of ``inputs["x"]`` (B, N, 3); ``mask`` passes through when given."""

    def __init__(self, tokens_per_clip: int | None = None) -> None:
        super().__init__()
        self.output_dim = D
        self.linear = nn.Linear(3, D)
        if tokens_per_clip is not None:
            self.tokens_per_clip = tokens_per_clip

    def forward(self, inputs: dict[str, Tensor]) -> EncoderOutput:
        sequence = self.linear(inputs["x"])
        return EncoderOutput(sequence, sequence.mean(dim=1), inputs.get("mask"))


def make(groups: list[Any], **fields: object) -> tuple[LoomModel, MGA]:
    torch.manual_seed(0)
    components = {"text": Toy(), "vision": Toy(), "audio": Toy(tokens_per_clip=2)}
    config = MGASpec.model_validate({"groups": groups, "embed_dim": 6, **fields})
    mga = MGA(config, {name: D for name in components})
    inputs = {"text": ("text",), "vision": ("video",), "audio": ("audio",)}
    return LoomModel(components, inputs, [("mga", 1.0, mga)]), mga


def batch(seed: int = 0, audio_present: list[bool] | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(B, dtype=torch.bool)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]])
    return {
        "text": {"x": torch.randn(B, 4, 3, generator=g), "mask": mask, "present": ones},
        # pixel_values only gives the time axis: 3 frames -> sequence (B, 3, D) is per frame
        "video": {
            "x": torch.randn(B, 3, 3, generator=g),
            "pixel_values": torch.zeros(B, 3, 3, 2, 2),
            "present": ones.clone(),
        },
        # 2 clips of 2 tokens; "cls" pooling takes tokens 0 and 2
        "audio": {
            "x": torch.randn(B, 4, 3, generator=g),
            "present": torch.tensor(audio_present or [True] * B),
        },
    }


def transcribed_loss(
    mga: MGA, features: FeatureCache, text: str, others: list[str], rows: list[int]
) -> Tensor:
    """SPEC B7 with explicit loops over pairs, tokens and frames."""
    t_out = features[text]
    e_t = F.normalize(mga.proj[text](t_out.sequence), dim=-1)
    l_t = mga.weight[text](e_t).squeeze(-1)
    e_x_parts, l_x_parts = [], []
    for name in others:
        seq = features[name].sequence
        frames = seq[:, ::2] if name == "audio" else seq
        e = F.normalize(mga.proj[name](frames), dim=-1)
        e_x_parts.append(e)
        l_x_parts.append(mga.weight[name](e).squeeze(-1))
    e_x, l_x = torch.cat(e_x_parts, 1), torch.cat(l_x_parts, 1)
    scores = torch.zeros(len(rows), len(rows))
    for a, i in enumerate(rows):
        valid = t_out.mask[i].bool()
        et, wt = e_t[i][valid], F.softmax(l_t[i][valid], dim=0)
        for b, j in enumerate(rows):
            ex, wx = e_x[j], F.softmax(l_x[j], dim=0)
            dots = et @ ex.T
            s_t = sum(wt[n] * dots[n].max() for n in range(len(et)))
            s_x = sum(wx[m] * dots[:, m].max() for m in range(len(ex)))
            scores[a, b] = 0.5 * s_t + 0.5 * s_x
    logits = scores / mga.temperature.value
    target = torch.arange(len(rows))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def test_mga_matches_loop_transcription_for_v_a_and_av_groups() -> None:
    groups = [["text", "vision"], ["text", "audio"], ["text", ["vision", "audio"]]]
    model, mga = make(groups)
    features = FeatureCache(model, batch())
    out = mga(features)
    expected = [
        transcribed_loss(mga, features, "text", ["vision"], [0, 1, 2, 3]),
        transcribed_loss(mga, features, "text", ["audio"], [0, 1, 2, 3]),
        transcribed_loss(mga, features, "text", ["vision", "audio"], [0, 1, 2, 3]),
    ]
    assert_close(out["text-vision"], expected[0].detach())
    assert_close(out["text-audio"], expected[1].detach())
    assert_close(out["text-vision+audio"], expected[2].detach())
    assert_close(out["mga_loss"], torch.stack(expected).mean())


def test_padded_tokens_do_not_change_the_loss_and_chunking_is_exact() -> None:
    model, mga = make([["text", "vision"]])
    data = batch()
    reference = mga(FeatureCache(model, data))["mga_loss"]
    data["text"]["x"][1, 2:] = 100.0  # padding of sample 1
    assert_close(mga(FeatureCache(model, data))["mga_loss"], reference)
    chunked, chunked_mga = make([["text", "vision"]], chunk_size=1)
    assert_close(chunked_mga(FeatureCache(chunked, data))["mga_loss"], reference)


def test_samples_without_audio_leave_the_audio_groups() -> None:
    groups = [["text", "vision"], ["text", "audio"]]
    model, mga = make(groups)
    features = FeatureCache(model, batch(audio_present=[True, False, True, True]))
    out = mga(features)
    expected = transcribed_loss(mga, features, "text", ["audio"], [0, 2, 3])
    assert_close(out["text-audio"], expected.detach())
    single = FeatureCache(model, batch(audio_present=[False, False, True, False]))
    out = mga(single)
    assert "text-audio" not in out  # fewer than two samples: skipped
    assert_close(out["mga_loss"], out["text-vision"])
    del single.batch["audio"], single.batch["video"]  # no group at all
    nothing = mga(FeatureCache(model, single.batch))["mga_loss"]
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_similarity_loss_equals_contrastive_loss_on_dot_products() -> None:
    a = F.normalize(torch.randn(5, 3, dtype=torch.float64), dim=-1)
    b = F.normalize(torch.randn(5, 3, dtype=torch.float64), dim=-1)
    assert_close(similarity_contrastive_loss(a @ b.T, 0.1), contrastive_loss(a, b, 0.1))


def _output(sequence: Tensor) -> EncoderOutput:
    return EncoderOutput(sequence, sequence.sum(dim=1), None)


def test_frame_features_rules() -> None:
    video = {"pixel_values": torch.zeros(2, 3, 3, 4, 4)}  # T = 3
    plain = nn.Module()
    per_frame = torch.randn(2, 3, D)
    assert torch.equal(frame_features(_output(per_frame), plain, video, "cls")[0], per_frame)
    timesformer = torch.randn(2, 1 + 3 * 4, D)  # [CLS] + frame-major patches
    got, mask = frame_features(_output(timesformer), plain, video, "cls")
    assert_close(got, timesformer[:, 1:].view(2, 3, 4, D).mean(dim=2))
    assert mask.shape == (2, 3) and mask.all()
    clip = torch.randn(2, 3 * 5, D)  # each frame: [CLS] + 4 patches
    assert_close(frame_features(_output(clip), plain, video, "cls")[0], clip[:, ::5])
    assert_close(
        frame_features(_output(clip), plain, video, "mean")[0], clip.view(2, 3, 5, D).mean(2)
    )
    ast = nn.Module()
    ast.tokens_per_clip = 4  # type: ignore[assignment]
    audio = torch.randn(2, 8, D)
    assert_close(frame_features(_output(audio), ast, {}, "cls")[0], audio[:, ::4])
    image = torch.randn(2, 17, D)  # T = 1: frame_pooling applies, `pooled` is not used
    one_frame = {"pixel_values": torch.zeros(2, 3, 4, 4)}
    assert_close(frame_features(_output(image), plain, one_frame, "cls")[0], image[:, :1])
    assert_close(
        frame_features(_output(image), plain, one_frame, "mean")[0], image.mean(1, keepdim=True)
    )
    one_clip = audio[:, :4]  # the same clip alone gives the same feature as within two
    assert_close(frame_features(_output(one_clip), ast, {}, "cls")[0], audio[:, :1])
    with pytest.raises(ValueError, match="cannot split 8 tokens"):
        frame_features(_output(torch.randn(2, 8, D)), plain, video, "cls")


def test_frame_feature_same_for_one_frame_or_several() -> None:
    """A CLIP frame's MGA feature does not depend on how many frames its clip has (#13 §3)."""
    frame = torch.randn(2, 5, D)  # [CLS] + 4 patches
    other = torch.randn(2, 5, D)
    plain = nn.Module()
    alone = frame_features(_output(frame), plain, {"pixel_values": torch.zeros(2, 3, 4, 4)}, "cls")
    video = {"pixel_values": torch.zeros(2, 2, 3, 4, 4)}
    within = frame_features(_output(torch.cat([frame, other], dim=1)), plain, video, "cls")
    assert torch.equal(alone[0][:, 0], within[0][:, 0])


# ------------------------------------------------- negatives from every rank (2 gloo processes)

RANK_ROWS = ((3, 5), (2, 3))  # (samples, text tokens) per rank: uneven on purpose
GATHER_DIM = 6


def _global_sides() -> tuple[list[Tensor], list[Tensor]]:
    """Every rank's (text, frames) leaves: features (b, N, C), masks (b, N), weight logits."""
    g = torch.Generator().manual_seed(0)
    texts, frames = [], []
    for rows, tokens in RANK_ROWS:
        texts.append(F.normalize(torch.randn(rows, tokens, GATHER_DIM, generator=g), dim=-1))
        texts.append(torch.randn(rows, tokens, generator=g))
        frames.append(F.normalize(torch.randn(rows, 4, GATHER_DIM, generator=g), dim=-1))
        frames.append(torch.randn(rows, 4, generator=g))
    return texts, frames


def _side(features: Tensor, logits: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Zero-padded to ``width`` tokens, with the padding masked."""
    pad = width - features.shape[1]
    mask = torch.cat([torch.ones(features.shape[:2]), torch.zeros(features.shape[0], pad)], 1)
    return F.pad(features, (0, 0, 0, pad)), mask.bool(), F.pad(logits, (0, pad))


def _mga() -> MGA:
    config = MGASpec(groups=[["text", "vision"]], embed_dim=GATHER_DIM, learnable_temperature=False)
    return MGA(config, {"text": GATHER_DIM, "vision": GATHER_DIM})


def _gather_worker(local_rank: int, port: int, directory: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=local_rank, world_size=2
    )
    try:
        texts, frames = _global_sides()
        leaves = [
            t.requires_grad_()
            for t in (
                *texts[2 * local_rank : 2 * local_rank + 2],
                *frames[2 * local_rank : 2 * local_rank + 2],
            )
        ]
        text = _side(leaves[0], leaves[1], leaves[0].shape[1])
        other = _side(leaves[2], leaves[3], 4)
        mga = _mga()
        cache = {"text": text, "vision": other}
        rows = torch.arange(leaves[0].shape[0])
        loss = mga.group_loss(cache, ["text", "vision"], rows, mga.temperature())
        loss.backward()
        torch.save(
            {"loss": loss.detach(), "grads": [leaf.grad for leaf in leaves]},
            f"{directory}/rank{local_rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_gathered_mga_matches_one_process_on_the_global_batch(tmp_path: Any) -> None:
    """Two ranks (3 and 2 samples, 5 and 3 text tokens) each score their rows against the
    gathered global batch; the ranks' mean loss is the single-process loss and every local
    feature gets ``world_size`` times its single-process gradient (DDP then averages)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path), str(port)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    texts, frames = _global_sides()
    leaves = [t.requires_grad_() for t in (*texts, *frames)]
    width = max(t.shape[1] for t in texts)
    text_parts = [_side(leaves[i], leaves[i + 1], width) for i in (0, 2)]
    other_parts = [_side(leaves[i], leaves[i + 1], 4) for i in (4, 6)]
    cache = {
        "text": tuple(torch.cat([p[i] for p in text_parts]) for i in range(3)),
        "vision": tuple(torch.cat([p[i] for p in other_parts]) for i in range(3)),
    }
    mga = _mga()
    total = sum(rows for rows, _ in RANK_ROWS)
    loss = mga.group_loss(cache, ["text", "vision"], torch.arange(total), mga.temperature())
    loss.backward()
    assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach())
    for rank, result in enumerate(ranks):
        expected = [
            leaves[2 * rank].grad,
            leaves[2 * rank + 1].grad,
            leaves[4 + 2 * rank].grad,
            leaves[4 + 2 * rank + 1].grad,
        ]
        for got, want in zip(result["grads"], expected, strict=True):
            assert_close(got, 2 * want)


if __name__ == "__main__":
    import sys

    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(int(sys.argv[2]), sys.argv[1]), nprocs=2, join=True)


def _plain_loss(mga: MGA, features: FeatureCache, left: str, right: list[str]) -> Tensor:
    """s(L, X) of the joined right side, then the symmetric InfoNCE, composed by hand."""
    text = mga.embed(features, left)
    parts = [mga.embed(features, name) for name in right]
    other = tuple(torch.cat([p[i] for p in parts], dim=1) for i in range(3))
    similarity = fine_grained_similarity(*text, *other)
    return similarity_contrastive_loss(similarity, mga.temperature.value)


def test_the_default_path_is_the_papers_bit_for_bit() -> None:
    """Options with VALOR's defaults give exactly the composition of the plain functions."""
    groups = [["text", "vision"], ["text", ["vision", "audio"]]]
    model, mga = make(groups)
    features = FeatureCache(model, batch())
    out = mga(features)
    assert torch.equal(out["text-vision"], _plain_loss(mga, features, "text", ["vision"]).detach())
    assert torch.equal(
        out["text-vision+audio"],
        _plain_loss(mga, features, "text", ["vision", "audio"]).detach(),
    )
    query = mga.retrieval_side(("text",), features)
    target = mga.retrieval_side(("vision", "audio"), features)
    assert query is not None and target is not None and "tokens_0" not in target
    expected = fine_grained_similarity(
        query["tokens"], query["mask"] > 0.5, query["logits"],
        target["tokens"], target["mask"] > 0.5, target["logits"],
    )  # fmt: skip
    assert torch.equal(mga.retrieval_scores(query, target), expected)
    assert torch.equal(mga.retrieval_scores(target, query), expected.T)


def test_groups_in_any_order_text_need_not_come_first() -> None:
    """VALOR Tab. 8: V-A, A-TV and V-TA groups."""
    groups = [["vision", "audio"], ["audio", ["text", "vision"]], ["vision", ["text", "audio"]]]
    model, mga = make(groups)
    mga.text_names = {"text"}  # what make_mga reads from the components' modality
    features = FeatureCache(model, batch())
    out = mga(features)
    expected = [
        _plain_loss(mga, features, "vision", ["audio"]),
        _plain_loss(mga, features, "audio", ["text", "vision"]),
        _plain_loss(mga, features, "vision", ["text", "audio"]),
    ]
    assert_close(out["vision-audio"], expected[0].detach())
    assert_close(out["audio-text+vision"], expected[1].detach())
    assert_close(out["vision-text+audio"], expected[2].detach())
    assert_close(out["mga_loss"], torch.stack(expected).mean())
    text = mga.embed(features, "text")
    assert text[0].shape[1] == 4  # tokens, not frames
    out["mga_loss"].backward()
    assert model.components["text"].linear.weight.grad is not None


def test_score_fusion_coarse_and_mean_variants_train_and_score_alike() -> None:
    groups = [["text", ["vision", "audio"]]]
    for fields in ({"fusion": "score"}, {"granularity": "coarse"}, {"weighting": "mean"}):
        model, mga = make(groups, **fields)
        features = FeatureCache(model, batch())
        loss = mga(features)["mga_loss"]
        text = mga.embed(features, "text")
        parts = [mga.embed(features, name) for name in ("vision", "audio")]
        similarity = group_similarity(
            text, parts if "fusion" in fields else [join(parts)], mga.scoring
        )
        assert_close(loss, similarity_contrastive_loss(similarity, mga.temperature.value))
        query = mga.retrieval_side(("text",), features)
        target = mga.retrieval_side(("vision", "audio"), features)
        assert query is not None and target is not None
        assert_close(mga.retrieval_scores(query, target), similarity)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in mga.parameters() if p.grad is not None)


def test_the_factory_takes_tokens_from_text_encoders_wherever_they_sit() -> None:
    text, vision, audio = Toy(), Toy(), Toy()
    text.modality = "text"
    ctx = BuildContext(load_plugins(entry_points=False))
    ctx.components.update(text=text, vision=vision, audio=audio)
    config = MGASpec.model_validate(
        {"groups": [["vision", "audio"], ["audio", ["text", "vision"]]]}
    )
    assert make_mga(config, ctx).text_names == {"text"}
