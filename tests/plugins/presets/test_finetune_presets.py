"""The eight fine-tuning presets (issue 14 §3): each validates at paper size and, shrunk, trains
2 steps from a tiny run of its paper preset on manifests laid out as `modaloom data convert`
writes them, then runs its evaluators."""

from __future__ import annotations

import json
import math
import random
import wave
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from PIL import Image

from modaloom.core.build_check import check_build
from modaloom.core.convert import convert_dataset
from modaloom.core.evaluation import run_evaluators
from modaloom.core.inference import load_run
from modaloom.core.init_from import INIT_REPORT_FILE, check_init_from
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec, resolve_tree
from modaloom.tests.tiny import TINY_AST, TINY_BERT, TINY_VIT

PAPER_OF = {
    "omnivl-coco-ret": "omnivl",
    "omnivl-msrvtt-ret": "omnivl",
    "omnivl-vqa": "omnivl",
    "valor-msrvtt-ret": "valor",
    "valor-msrvtt-cap": "valor",
    "valor-audiocaps-cap": "valor",
    "cots-coco-ret": "cots",
    "cots-flickr-ret": "cots",
}
METRICS = {
    "omnivl-coco-ret": ["retrieval.t2i.r1", "retrieval.i2t.r10", "retrieval.t2i_itm.r1"],
    "omnivl-msrvtt-ret": ["retrieval.t2v.r1", "retrieval.t2v.medr", "retrieval.t2v_itm.r1"],
    "omnivl-vqa": ["qa.accuracy"],
    "valor-msrvtt-ret": ["retrieval.t2av.r1", "retrieval.t2av_dsl.r1"],
    "valor-msrvtt-cap": ["captioning.cider", "captioning.bleu4"],
    "valor-audiocaps-cap": ["captioning.cider", "captioning.rouge_l"],
    "cots-coco-ret": ["retrieval.t2i.r1", "retrieval.t2i.rsum"],
    "cots-flickr-ret": ["retrieval.t2i.r5", "retrieval.i2t.r1"],
}
WORDS = ("red", "green", "blue", "square", "circle", "dog", "cat", "runs", "sits", "plays")
TINY_CONFIG = {
    "bert": TINY_BERT,
    "vit": TINY_VIT,
    "timesformer": TINY_VIT,
    "clip_vision": TINY_VIT,
    "ast": TINY_AST,
}
TINY_SIZE = {224: 32, 384: 48, 480: 64}
"""Paper image sizes -> tiny ones (fine-tuning at another size resizes position embeddings)."""
TINY_QUEUE = {57600: 32, 12800: 32, 6400: 16, 1200: 8}
"""Paper queue sizes -> tiny ones (COTS's smaller fine-tuning queues keep their ratio)."""


def caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(5))


def write_clip(path: Path, rng: random.Random) -> None:
    """A 1 s 32x32 mpeg4 clip at 8 fps with an AAC noise track."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=8)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("aac", rate=16000, layout="mono")
        for _ in range(8):
            pixels = np.full((32, 32, 3), rng.randrange(256), np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(video.encode())
        for start in range(0, 16000, 1024):
            noise = np.random.default_rng(start).uniform(-0.3, 0.3, (1, 1024))
            samples = noise.astype(np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


def write_wav(path: Path, seed: int) -> None:
    """1 s of 16 kHz mono noise."""
    samples = np.random.default_rng(seed).uniform(-0.3, 0.3, 16000)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((samples * 32767).astype("<i2").tobytes())


def write_manifest(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def media_lines(folder: Path, field: str, count: int, captions: int, seed: int) -> list[dict]:
    """``count`` items with ``captions`` captions each, as `data convert` writes them."""
    rng = random.Random(seed)
    (folder / "media").mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        name = f"media/{seed}-{index}." + {"image": "png", "video": "mp4", "audio": "wav"}[field]
        if field == "image":
            Image.fromarray(np.full((40, 40, 3), rng.randrange(256), np.uint8)).save(folder / name)
        elif field == "video":
            write_clip(folder / name, rng)
        else:
            write_wav(folder / name, seed * 100 + index)
        texts = [caption(rng) for _ in range(captions)]
        lines.append({"id": str(index), "item": str(index), field: name, "text": texts})
    return lines


def write_image(path: Path, rng: random.Random) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 40, 3), rng.randrange(256), np.uint8)).save(path)


def convert_coco(root: Path, data: Path, rng: random.Random) -> None:
    """``data/coco`` by `data convert coco-karpathy` of a fabricated dataset_coco.json."""
    images = []
    for cocoid, split in enumerate(["train"] * 6 + ["restval"] * 2 + ["test"] * 6, start=1):
        name = f"COCO_val2014_{cocoid:012d}.jpg"
        write_image(root / "coco-media" / "val2014" / name, rng)
        sentences = [{"raw": caption(rng), "tokens": []} for _ in range(2 + (split == "test"))]
        images.append(
            {
                "filepath": "val2014",
                "filename": name,
                "split": split,
                "sentences": sentences,
                "cocoid": cocoid,
                "sentids": [],
            }
        )
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))
    convert_dataset(
        "coco-karpathy", [root / "dataset_coco.json"], data / "coco", root / "coco-media"
    )


def convert_vqa(root: Path, data: Path, rng: random.Random) -> None:
    """``data/vqa`` (and its answer_list.json) by `data convert vqav2` of fabricated files."""
    sources = []
    for subtype, count in (("train2014", 8), ("val2014", 4)):
        questions, annotations = [], []
        for image_id in range(1, count + 1):
            write_image(root / "vqa-media" / subtype / f"COCO_{subtype}_{image_id:012d}.jpg", rng)
            question = {
                "image_id": image_id,
                "question_id": image_id * 10,
                "question": f"what colour is the {rng.choice(WORDS)}?",
            }
            answers = [
                {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                for i, a in enumerate(["red"] * 6 + ["blue"] * 4)
            ]
            questions.append(question)
            annotations.append(
                {
                    **question,
                    "answers": answers,
                    "multiple_choice_answer": "red",
                    "answer_type": "other",
                    "question_type": "what color",
                }
            )
        for name, value in (("questions", questions), ("annotations", annotations)):
            sources.append(root / f"{subtype}_{name}.json")
            sources[-1].write_text(json.dumps({"data_subtype": subtype, name: value}))
    convert_dataset("vqav2", sources, data / "vqa", root / "vqa-media")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifests at the presets' own paths (``data/coco/train.jsonl``...): COCO and VQA v2 by
    `data convert` from fabricated annotation files, the others fabricated in its layout."""
    root = tmp_path_factory.mktemp("finetune")
    data = root / "data"
    convert_coco(root, data, random.Random(0))
    convert_vqa(root, data, random.Random(1))
    kinds = {"flickr30k": "image", "msrvtt": "video", "audiocaps": "audio"}
    for seed, (name, field) in enumerate(kinds.items()):
        write_manifest(data / name / "train.jsonl", media_lines(data / name, field, 8, 2, seed))
        write_manifest(data / name / "test.jsonl", media_lines(data / name, field, 6, 3, seed + 9))
    (data / "msrvtt-cap").symlink_to("msrvtt", target_is_directory=True)  # another split there
    return root


def shrink_model(tree: dict[str, Any]) -> None:
    """Tiny encoders (paper image sizes kept in proportion), embeddings, queues, codebooks."""
    for component in tree["model"]["components"].values():
        if "config" in component:
            size = component["config"].get("image_size")
            component["config"] = dict(TINY_CONFIG[component["type"]])
            if size is not None:
                component["config"]["image_size"] = TINY_SIZE[size]
        if "num_frames" in component:
            component["num_frames"] = 2
    for objective in tree["model"]["objectives"]:
        if "embed_dim" in objective:
            objective["embed_dim"] = 16
        if "queue_size" in objective:
            objective["queue_size"] = TINY_QUEUE[objective["queue_size"]]
        if "visual_tokenizer" in objective:
            objective["visual_tokenizer"].update(codes=16, fit_steps=1)


def shrink_data(tree: dict[str, Any], root: Path) -> None:
    """Manifest paths under ``root``, small batches, 2 frames, 1 s of audio, fp32."""
    data = tree["data"]
    for source in [*data["sources"].values(), *data.get("eval_sources", {}).values()]:
        source["path"] = str(root / source["path"])
    data.update(batch_size=4, eval_batch_size=4, num_workers=0)
    for field in ("image", "video"):
        if "size" in data.get(field, {}):
            data[field]["size"] = TINY_SIZE[data[field]["size"]]
    data.setdefault("video", {})["frames"] = 2
    data["audio"] = {"clips": 1, "clip_seconds": 1.0, "target_length": 128, "mel_bins": 64}
    tree["train"].update(precision="fp32", log_every=1, checkpoint_every=1000)


def pretraining_tree(paper: str, root: Path, registry: Registry) -> dict[str, Any]:
    """The paper preset, tiny, for 1 step on one fabricated source."""
    tree = resolve_tree(paper, registry)
    shrink_model(tree)
    source: dict[str, Any] = {"type": "jsonl", "path": "data/coco/train.jsonl"}
    if paper == "valor":  # audio + video clips
        source.update(path="data/msrvtt/train.jsonl", fields={"audio": "video"})
    tree["data"]["sources"] = {"pretrain": source}
    tree["train"].pop("stages", None)
    tree["train"]["steps"] = 1
    shrink_data(tree, root)
    return tree


@pytest.fixture(scope="module")
def pretrained_runs(
    data_root: Path, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """One tiny 1-step run of each paper preset, the fine-tuning runs' ``init_from``."""
    runs = {}
    for paper in sorted(set(PAPER_OF.values())):
        runs[paper] = tmp_path_factory.mktemp("pretrained") / paper
        spec = load_spec(pretraining_tree(paper, data_root, registry), registry=registry)
        train(spec, runs[paper], registry=registry, show_progress=False)
    return runs


def finetune_tree(preset: str, root: Path, run: Path, registry: Registry) -> dict[str, Any]:
    """The preset, tiny, for 2 steps from ``run``; captioning without the Java metrics."""
    tree = resolve_tree(preset, registry)
    shrink_model(tree)
    shrink_data(tree, root)
    tree["train"]["init_from"]["path"] = str(run)
    tree["train"]["stages"][0]["steps"] = 2
    for stage in tree["train"]["stages"]:
        if "video" in stage.get("data", {}):
            stage["data"]["video"]["frames"] = 1
    for evaluator in tree["eval"]:
        if evaluator["type"] == "captioning":
            evaluator.update(num_beams=2, max_length=6, meteor=False, spice=False)
        if evaluator["type"] == "qa" and "answer_list" in evaluator:
            evaluator["answer_list"] = str(root / evaluator["answer_list"])
    return tree


@pytest.mark.parametrize("preset", sorted(PAPER_OF))
def test_preset_validates_at_paper_size(preset: str, registry: Registry) -> None:
    spec = load_spec(preset, registry=registry)
    assert check_build(spec, registry).built
    assert spec.train.init_from is not None
    assert spec.train.init_from.path == f"runs/{PAPER_OF[preset]}"
    assert spec.model.objectives and spec.eval


@pytest.mark.parametrize("preset", sorted(PAPER_OF))
def test_preset_fine_tunes_2_steps_and_evaluates(
    preset: str,
    registry: Registry,
    data_root: Path,
    pretrained_runs: dict[str, Path],
    tmp_path: Path,
) -> None:
    tree = finetune_tree(preset, data_root, pretrained_runs[PAPER_OF[preset]], registry)
    spec = load_spec(tree, registry=registry)
    check_init_from(spec)
    check_build(spec, registry)
    result = train(spec, tmp_path, registry=registry, show_progress=False)
    assert result.step == 2
    assert math.isfinite(result.last_loss)
    report = json.loads((tmp_path / INIT_REPORT_FILE).read_text())
    assert report["loaded"]
    dropped = ".vision." if preset == "valor-audiocaps-cap" else None  # its MGC has no T-V
    assert all(dropped is not None and dropped in key for key in report["unexpected"])
    assert report["objectives"] == spec.train.init_from.objectives
    run = load_run(tmp_path, spec=spec, registry=registry)
    metrics = run_evaluators(spec, run.model, run.processors, run.sources, registry, run.device)
    assert set(METRICS[preset]) <= set(metrics), sorted(metrics)
    assert all(math.isfinite(value) for value in metrics.values())
