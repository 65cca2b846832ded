"""The retrieval evaluator: ITM re-ranking by hand, and the 5-caption protocol on a tiny model
(one line per image with a list of captions, or one line per caption with an ``item`` field)
against `retrieval_metrics` on the dense score matrix."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from modaloom.core.compose import build_model
from modaloom.core.data import batch_from_values, build_processors, build_sources
from modaloom.core.errors import SpecError
from modaloom.core.evaluation import EvalContext
from modaloom.core.features import FeatureCache
from modaloom.core.interfaces import Objective
from modaloom.core.metrics import Matches, retrieval_metrics
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.plugins.evaluators.retrieval import RetrievalEvaluator, RetrievalSpec
from modaloom.plugins.evaluators.retrieval_rerank import reranked_ranks
from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec


class DotObjective(Objective):
    def retrieval_scores(self, query: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        return query["embedding"] @ target["embedding"].T


class FakeITM:
    """Matches text i with visual j when the visual token equals the text's first id."""

    class config:
        decoder = "align"

    def match_logits(self, decoder, input_ids, attention_mask, visual, visual_mask):  # type: ignore[no-untyped-def]
        match = (visual[:, 0, 0] == input_ids[:, 0].float()).float() * 20 - 10
        return torch.stack([-match, match], dim=1)


class RecordingITM(FakeITM):
    """Records the (text ids, visual tokens) of every call, as sample indices."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor]] = []

    def match_logits(self, decoder, input_ids, attention_mask, visual, visual_mask):  # type: ignore[no-untyped-def]
        self.calls.append((input_ids[:, 0].clone(), visual[:, 0, 0].long()))
        return super().match_logits(decoder, input_ids, attention_mask, visual, visual_mask)


def test_itm_rerank_moves_the_matching_target_up() -> None:
    scores = torch.tensor([[0.1, 0.3, 0.2], [0.5, 0.4, 0.0], [0.9, 0.8, 0.1]])
    sides = ({"embedding": scores}, {"embedding": torch.eye(3)})
    texts = {"input_ids": torch.tensor([[0], [1], [2]]), "attention_mask": torch.ones(3, 1)}
    visuals = {"visual": torch.arange(3).float().view(3, 1, 1), "visual_mask": torch.ones(3, 1)}
    ctx = SimpleNamespace(
        model=SimpleNamespace(components={"align": None}), device=torch.device("cpu")
    )
    own = Matches(torch.arange(3), torch.arange(3))
    inputs = (texts, visuals)

    def ranks(itm: FakeITM, k: int, rows: range, text_query: bool = True) -> list[int]:
        matches = own if text_query else own.transposed()
        args = (itm, ctx, DotObjective(), sides, inputs, matches, k, rows, text_query)
        return reranked_ranks(*args).tolist()  # type: ignore[arg-type]

    assert ranks(FakeITM(), 2, range(3)) == [3, 1, 3]  # query 0's match not in its top 2: kept
    assert ranks(FakeITM(), 3, range(3)) == [1, 1, 1]
    assert ranks(FakeITM(), 3, range(0, 1)) + ranks(FakeITM(), 3, range(1, 3)) == [1, 1, 1]
    # visual queries against texts: the query's visual tokens meet each candidate text
    recorder = RecordingITM()
    assert ranks(recorder, 2, range(3), text_query=False) == [3, 1, 3]
    ((text_ids, visual_ids),) = recorder.calls  # only query 1 has its match in its top 2
    assert visual_ids.tolist() == [1, 1] and sorted(text_ids.tolist()) == [0, 1]
    assert ranks(FakeITM(), 3, range(3), text_query=False) == [1, 1, 1]


# ------------------------------------------------------------------------------ tiny model

PHRASES = ("a {c} {s}", "a {s} in {c}", "{c} {s}", "the {c} {s}", "a picture of a {c} {s}")


def five_caption_manifests(shapes: Path, directory: Path, count: int) -> tuple[Path, Path]:
    """The first ``count`` shapes with 5 captions each: one line per image (a list) and one
    line per caption (with the image as ``item``). Captions end with the image's number, so no
    two images share one (equal captions would tie up to rounding)."""
    per_image, per_caption = [], []
    for index, line in enumerate(shapes.read_text().splitlines()[:count]):
        record = json.loads(line)
        _, color, shape = record["text"].split()
        captions = [f"{phrase.format(c=color, s=shape)} {index}" for phrase in PHRASES]
        image = str(shapes.parent / record["image"])
        per_image.append({"image": image, "text": captions})
        per_caption += [{"image": image, "text": text, "item": image} for text in captions]
    paths = directory / "per_image.jsonl", directory / "per_caption.jsonl"
    for path, records in zip(paths, (per_image, per_caption), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return paths


@pytest.fixture(scope="module")
def tiny(registry: Registry, shapes_manifest: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An untrained clip-tiny model with its processors, and the two 5-caption manifests."""
    directory = tmp_path_factory.mktemp("five")
    per_image, per_caption = five_caption_manifests(shapes_manifest, directory, 12)
    spec = load_spec("clip-tiny", [f"data.sources.train.path={per_image}"], registry)
    processors = build_processors(spec.data, registry, build_sources(spec.data.sources, registry))
    torch.manual_seed(0)
    model = build_model(spec.model, registry, processors).eval()
    return model, processors, per_image, per_caption


def evaluate(tiny, manifest: Path, **options) -> tuple[dict[str, float], RetrievalEvaluator]:  # type: ignore[no-untyped-def]
    model, processors, _, _ = tiny
    ctx = EvalContext(model, processors, JsonlSource(JsonlSpec(path=str(manifest))), batch_size=7)
    evaluator = RetrievalEvaluator(RetrievalSpec(source="test", name="t2i", **options))
    with torch.no_grad():
        return evaluator.evaluate(ctx), evaluator


def dense_scores(tiny) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    """(60 captions, 12 images) scores embedded one by one, and each caption's image."""
    model, processors, per_image, _ = tiny
    records = [json.loads(line) for line in per_image.read_text().splitlines()]
    captions = [text for record in records for text in record["text"]]
    itc = model.objectives[0]
    with torch.no_grad():
        images = batch_from_values(processors, {"image": [r["image"] for r in records]})
        texts = batch_from_values(processors, {"text": captions})
        image_side = itc.retrieval_side(("vision",), FeatureCache(model, images))
        text_side = itc.retrieval_side(("text",), FeatureCache(model, texts))
        assert image_side is not None and text_side is not None
        scores = itc.retrieval_scores(text_side, image_side)
    return scores, torch.arange(12).repeat_interleave(5)


def test_five_captions_per_image_follow_the_protocol(tiny) -> None:  # type: ignore[no-untyped-def]
    metrics, evaluator = evaluate(tiny, tiny[2], match_by="item", chunk_size=4)
    scores, caption_image = dense_scores(tiny)
    positives = caption_image[:, None] == torch.arange(12)[None, :]
    t2i, i2t = retrieval_metrics(scores, positives), retrieval_metrics(scores.T, positives.T)
    expected = {f"retrieval.t2i.{k}": v for k, v in t2i.items()}
    expected |= {f"retrieval.i2t.{k}": v for k, v in i2t.items()}
    expected["retrieval.t2i.rmean"] = (t2i["r1"] + t2i["r5"] + t2i["r10"]) / 3
    expected["retrieval.i2t.rmean"] = (i2t["r1"] + i2t["r5"] + i2t["r10"]) / 3
    expected["retrieval.t2i.rsum"] = sum(m[f"r{k}"] for m in (t2i, i2t) for k in (1, 5, 10))
    assert metrics == pytest.approx(expected)
    first = json.loads(tiny[2].read_text().splitlines()[0])["text"]
    assert [example["query"] for example in evaluator.examples] == first  # in order


def test_one_line_per_caption_with_an_item_field_is_the_same_protocol(tiny) -> None:  # type: ignore[no-untyped-def]
    per_image, _ = evaluate(tiny, tiny[2], match_by="item")
    per_caption, _ = evaluate(tiny, tiny[3], match_by="item", chunk_size=5)
    assert per_caption == pytest.approx(per_image)
    dsl, _ = evaluate(tiny, tiny[2], match_by="item", dsl=True)
    assert set(dsl) == set(per_image) and dsl != per_image


def test_match_by_text_also_counts_items_sharing_a_caption(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, processors, per_image, _ = tiny
    lines = [json.loads(line) for line in per_image.read_text().splitlines()]
    captions = [" ".join(r["text"][0].split()[:3]) for r in lines]  # "a red circle"
    one_caption = tmp_path / "one.jsonl"
    records = [{**r, "text": text} for r, text in zip(lines, captions, strict=True)]
    one_caption.write_text("".join(json.dumps(r) + "\n" for r in records))
    by_text, _ = evaluate(tiny, one_caption)
    by_item, _ = evaluate(tiny, one_caption, match_by="item")
    with torch.no_grad():  # one batch: equal captions get bit-identical embeddings
        batch = batch_from_values(
            processors, {"image": [r["image"] for r in lines], "text": captions}
        )
        features = FeatureCache(model, batch)
        itc = model.objectives[0]
        scores = itc.retrieval_scores(
            itc.retrieval_side(("text",), features), itc.retrieval_side(("vision",), features)
        )
    same_text = torch.tensor([[a == b for b in captions] for a in captions])
    assert same_text.sum() > len(captions)  # some shapes repeat: their captions are equal
    assert by_text["retrieval.t2i.r1"] == pytest.approx(retrieval_metrics(scores, same_text)["r1"])
    assert by_item["retrieval.t2i.r1"] == pytest.approx(
        retrieval_metrics(scores, torch.eye(12, dtype=torch.bool))["r1"]
    )


def test_rerank_needs_the_text_component_as_the_query(tiny, registry: Registry) -> None:  # type: ignore[no-untyped-def]
    model, processors, per_image, _ = tiny
    ctx = EvalContext(model, processors, JsonlSource(JsonlSpec(path=str(per_image))), 7)
    evaluator = RetrievalEvaluator(RetrievalSpec(source="t", query=["vision"], target=["text"]))
    with torch.no_grad():
        metrics = evaluator.evaluate(ctx)
    reverse, _ = evaluate(tiny, per_image)
    for metric in ("r1", "r5", "medr", "meanr"):  # vision->text: text->vision's reverse
        assert metrics[f"retrieval.v2t.{metric}"] == pytest.approx(
            reverse[f"retrieval.i2t.{metric}"]
        )
    itm = SimpleNamespace(config=SimpleNamespace(decoder="text", vision="vision"))
    with pytest.raises(SpecError, match="rerank needs the text component as the query"):
        evaluator.gallery(ctx, model.objectives[0], itm)
