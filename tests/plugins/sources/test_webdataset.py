"""The webdataset source: memory:// and http:// shards through the real loader, corrupt samples,
truncated shards, clear errors, and exact resume from a saved position."""

from __future__ import annotations

import functools
import http.server
import io
import itertools
import json
import logging
import random
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fsspec
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modaloom.core import shards
from modaloom.core import stream as core_stream
from modaloom.core.checkpoint import load_state
from modaloom.core.data import SampleDecoder
from modaloom.core.data_commands import pack_manifest
from modaloom.core.errors import DataError, MediaDecodeError
from modaloom.core.interfaces import DataContext, Processor
from modaloom.core.plugins import load_plugins
from modaloom.core.runner import train
from modaloom.core.spec import load_spec
from modaloom.core.stream import StreamPlan, TrainStream, make_train_loader, split_sources
from modaloom.modalities.text import TextSpec, make_text_processor
from modaloom.modalities.video import VideoProcessor, VideoSpec
from modaloom.plugins.sources import webdataset as webdataset_source
from modaloom.plugins.sources.digits_av import dtmf_tone, encode_clip, render_frames
from modaloom.plugins.sources.webdataset import StreamPosition, WebDatasetSource, WebDatasetSpec

Members = dict[str, bytes]


def tar_bytes(samples: list[tuple[str, Members]]) -> bytes:
    """A tar file holding ``<key>.<ext>`` members, written with plain `tarfile`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def caption_sample(key: str, label: int = 0) -> tuple[str, Members]:
    record = {"caption": f"caption of {key}", "qa": [{"question": "q", "answer": key}]}
    return key, {"json": json.dumps(record).encode(), "cls": str(label).encode()}


def caption_shards(shards: int, per_shard: int) -> list[bytes]:
    return [
        tar_bytes([caption_sample(f"s{s}-{i:02d}", i % 3) for i in range(per_shard)])
        for s in range(shards)
    ]


@pytest.fixture
def memory() -> Iterator[str]:
    """A fresh memory:// folder, removed afterwards."""
    root = f"/wds-{uuid.uuid4().hex}"
    fs = fsspec.filesystem("memory")
    try:
        yield root
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)


def put(root: str, name: str, data: bytes) -> str:
    fsspec.filesystem("memory").pipe(f"{root}/{name}", data)
    return f"memory://{root}/{name}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served at http://127.0.0.1:<free port>/ (no range requests), shut down after."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def publish(where: str, shards: list[bytes], request: pytest.FixtureRequest) -> str:
    """Put shards in memory:// or on the HTTP server; returns the brace pattern."""
    if where == "memory":
        root = request.getfixturevalue("memory")
        for index, data in enumerate(shards):
            put(root, f"part-{index:06d}.tar", data)
        return f"memory://{root}/part-{{000000..{len(shards) - 1:06d}}}.tar"
    directory, base = request.getfixturevalue("http_dir")
    for index, data in enumerate(shards):
        (directory / f"part-{index:06d}.tar").write_bytes(data)
    return f"{base}/part-{{000000..{len(shards) - 1:06d}}}.tar"


def source(urls: str | list[str], **fields: str) -> WebDatasetSource:
    return WebDatasetSource(WebDatasetSpec(urls=urls, fields=fields or {"text": "json.caption"}))


def stream_keys(
    src: WebDatasetSource, processors: dict, micro_batches: int, workers: int, batch_size: int = 4
) -> tuple[list[str], list[tuple[str, str]]]:
    """Keys and skipped (key, reason) of ``micro_batches`` micro-batches of the real loader."""
    plan = StreamPlan(["wds"], [1.0], [None], seed=0, batch_size=batch_size)
    decoder = SampleDecoder(processors, train=True)
    loader = make_train_loader(TrainStream([src], plan, decoder, stop=micro_batches), workers)
    keys, skipped = [], []
    for batch in loader:
        keys += batch["__keys__"]
        skipped += [tuple(entry) for entry in batch["__skipped__"]]
    return keys, skipped


# --- reading -------------------------------------------------------------------------------


def test_fields_read_members_and_dotted_json_with_types(memory: str) -> None:
    url = put(memory, "a.tar", tar_bytes([caption_sample("k1", label=2)]))
    src = source(url, text="json.caption", label="cls", answer="json.qa.0.answer", raw="json")
    (sample,) = list(src.iter_raw())
    assert dict(sample) == {
        "__key__": "k1",
        "__url__": url,
        "text": "caption of k1",
        "label": 2,
        "answer": "k1",
        "raw": {"caption": "caption of k1", "qa": [{"question": "q", "answer": "k1"}]},
    }


@pytest.mark.parametrize("where", ["memory", "http"])
def test_two_workers_read_every_sample_once_per_epoch(where: str, request) -> None:  # type: ignore[no-untyped-def]
    src = source(publish(where, caption_shards(3, 8), request))
    texts = list(src.texts())
    assert len(texts) == 24 and texts[0] == "caption of s0-00"
    text = make_text_processor(TextSpec(vocab_size=60), DataContext(texts=src.texts))
    keys, skipped = stream_keys(src, {"text": text}, micro_batches=12, workers=2)
    everything = sorted(f"s{s}-{i:02d}" for s in range(3) for i in range(8))
    assert sorted(keys[:24]) == everything and sorted(keys[24:]) == everything
    assert skipped == []


@pytest.mark.parametrize("where", ["memory", "http"])
def test_truncated_mp4_and_broken_json_are_skipped_and_counted(where: str, request) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    clip = encode_clip(render_frames(rng.uniform(0, 16, (8, 8)), rng), dtmf_tone(1, rng))
    good = [(f"c{i}", {"mp4": clip, "json": b'{"caption": "a clip"}'}) for i in range(6)]
    bad = [
        ("truncated", {"mp4": clip[: len(clip) // 2], "json": b'{"caption": "cut"}'}),
        ("broken", {"mp4": clip, "json": b'{"caption": "no end'}),
    ]
    src = source(
        publish(where, [tar_bytes(good[:3] + bad + good[3:])], request),
        video="mp4",
        text="json.caption",
    )
    text = make_text_processor(TextSpec(vocab_size=30), DataContext(texts=src.texts))
    processors = {"video": VideoProcessor(VideoSpec(frames=2, size=16)), "text": text}
    keys, skipped = stream_keys(src, processors, micro_batches=2, workers=2)
    assert sorted(keys) == [f"c{i}" for i in range(6)]
    assert [key for key, _ in skipped] == ["truncated", "broken"]
    assert skipped[1][1].startswith("invalid 'json' member for field 'text' (Unterminated string")


def test_skipped_samples_reach_metrics_jsonl(shapes_manifest: Path, tmp_path: Path) -> None:
    good = pack_manifest(shapes_manifest, tmp_path / "shards", shard_size=48, progress=False).shards
    corrupt = tmp_path / "shards" / "corrupt.tar"
    corrupt.write_bytes(
        tar_bytes(
            [
                (
                    "bad-json",
                    {"image": (shapes_manifest.parent / "img0.png").read_bytes(), "json": b"{x"},
                ),
                ("bad-png", {"image": b"\x89PNG not really", "json": b'{"text": "a red square"}'}),
            ]
        )
    )
    spec_source = {
        "type": "webdataset",
        "urls": [str(corrupt), *map(str, good)],
        "fields": {"image": "png;image", "text": "json.text"},  # ours, then older shards' name
    }
    registry = load_plugins(entry_points=False)
    overrides = [
        f"data.sources.train={json.dumps(spec_source)}",
        "train.steps=4",
        "train.log_every=2",
        "data.batch_size=8",
        "data.num_workers=2",
    ]
    spec = load_spec("clip-tiny", overrides, registry)
    result = train(spec, tmp_path / "run", registry=registry, show_progress=False)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert result.skipped_samples == 2 and json.loads(lines[-1])["skipped_samples"] == 2


def test_missing_members_skip_raise_or_stay_optional(memory: str) -> None:
    url = put(memory, "a.tar", tar_bytes([("k", {"json": b'{"caption": "c"}'})]))
    skip = source(url, text="json.caption", label="cls", title="json.title")
    (sample,) = list(skip.iter_raw())
    assert sample["text"] == "c"
    with pytest.raises(MediaDecodeError) as info:
        sample.get("label")
    assert info.value.cause == "no member 'cls' for field 'label' (members: json)"
    with pytest.raises(MediaDecodeError) as info:
        sample["title"]
    assert info.value.cause == "member 'json' has no 'title' for field 'title'"
    spec = WebDatasetSpec(urls=url, fields={"text": "json.caption", "label": "cls"})
    raising = WebDatasetSource(spec.model_copy(update={"on_missing": "raise"}))
    with pytest.raises(DataError) as error:
        list(raising.iter_raw())
    assert str(error.value) == (
        f"sample 'k' of {url}: no member 'cls' for field 'label' "
        "(members: json) (on_missing: raise)"
    )
    optional = WebDatasetSource(spec.model_copy(update={"optional_fields": ["label"]}))
    assert [dict(s) for s in optional.iter_raw()] == [{"__key__": "k", "__url__": url, "text": "c"}]


@pytest.mark.parametrize("where", ["memory", "http"])
@pytest.mark.parametrize("cut", ["in_member_data", "in_header"])
def test_truncated_shard_stops_with_a_warning(where: str, cut: str, request, caplog) -> None:  # type: ignore[no-untyped-def]
    samples = [(f"k{i}", {"json": b'{"caption": "%d"}' % i, "bin": bytes(700)}) for i in range(4)]
    # a sample is 2560 bytes: json (512 header + 512 data), bin (512 header + 1024 data)
    cut_at = 3 * 2560 + (1536 + 100 if cut == "in_member_data" else 1024 + 200)
    shards = [tar_bytes(samples)[:cut_at], tar_bytes(samples[:1])]
    src = source(publish(where, shards, request), bin="bin")
    with caplog.at_level(logging.WARNING):
        keys = [s["__key__"] for s in src.iter_raw()]
    if cut == "in_member_data":  # the partial last sample is dropped
        assert keys == ["k0", "k1", "k2", "k0"]
        assert "part-000000.tar is truncated or corrupt after 3 samples" in caplog.text
    else:  # complete members are kept; the sample lacking one is skipped when decoded
        assert keys == ["k0", "k1", "k2", "k3", "k0"]
        assert "part-000000.tar has no end-of-archive marker" in caplog.text


# --- errors --------------------------------------------------------------------------------


def test_empty_shard_list_unreachable_url_and_no_sample_are_data_errors(memory, http_dir) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError) as info:
        source([])
    assert str(info.value) == "webdataset source has an empty shard list (urls: [])"
    _, base = http_dir
    for url in (f"memory://{memory}/missing.tar", f"{base}/missing-{{0..1}}.tar"):
        with pytest.raises(DataError) as info:
            source(url)  # the first shard is checked when the source is built
        first = url.replace("{0..1}", "0")
        assert (
            str(info.value) == f"cannot open webdataset shard {first!r}: not found or unreachable"
        )
    good = put(memory, "good.tar", caption_shards(1, 2)[0])
    later = source([good, f"{base}/gone.tar"])  # a later shard fails when it is reached
    with pytest.raises(DataError) as info:
        list(later.iter_raw())
    assert (
        str(info.value)
        == f"cannot open webdataset shard '{base}/gone.tar': not found or unreachable"
    )
    empty = [put(memory, "empty.tar", tar_bytes([])), put(memory, "junk.tar", b"not a tar" * 100)]
    with pytest.raises(DataError) as info:
        list(source(empty).iter_raw())
    assert str(info.value) == (
        f"webdataset shards {empty[0]!r} and 1 more hold no sample; check that they are tar "
        "files of samples (warnings above)"
    )


# --- positions and splits ------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [0, 5])
@pytest.mark.parametrize("stop_after", [1, 7, 23, 30])
def test_saved_position_resumes_without_repeats_or_gaps(memory, shuffle, stop_after) -> None:  # type: ignore[no-untyped-def]
    for index, data in enumerate(caption_shards(3, 8)):
        put(memory, f"p{index}.tar", data)
    spec = WebDatasetSpec(
        urls=f"memory://{memory}/p{{0..2}}.tar",
        fields={"text": "json.caption"},
        shuffle_buffer=shuffle,
        seed=3,
    )
    reference = WebDatasetSource(spec).stream(loop=True)
    expected = [next(reference)["__key__"] for _ in range(48)]
    assert sorted(expected[:24]) == sorted(expected[24:]) and len(set(expected[:24])) == 24
    assert (expected[:24] != expected[24:]) == bool(shuffle)  # reshuffled every epoch
    first = WebDatasetSource(spec).stream(loop=True)
    head = [next(first)["__key__"] for _ in range(stop_after)]
    saved = json.loads(json.dumps(first.position.state_dict()))
    resumed = WebDatasetSource(spec).stream(StreamPosition.from_state(saved), loop=True)
    tail = [next(resumed)["__key__"] for _ in range(48 - stop_after)]
    assert head + tail == expected


def test_shards_split_by_rank_and_worker(memory: str) -> None:
    for index, data in enumerate(caption_shards(4, 3)):
        put(memory, f"p{index}.tar", data)
    src = source(f"memory://{memory}/p{{0..3}}.tar")
    seen = [
        [s["__key__"] for s in src.iter_raw(rank=r, world=2, worker=w, workers=2)]
        for r in range(2)
        for w in range(2)
    ]
    assert sorted(k for keys in seen for k in keys) == sorted(s["__key__"] for s in src.iter_raw())
    assert all(len(keys) == 3 for keys in seen)
    with pytest.raises(DataError) as info:
        src.shard_order(world=2, workers=3)
    assert str(info.value) == (
        "4 webdataset shard(s) cannot be split among 6 readers "
        "(2 ranks x 3 workers); write more shards"
    )


def test_texts_reads_only_the_text_member(memory: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    samples = [(f"k{i}", {"mp4": bytes(5000), "json": b'{"caption": "c%d"}' % i}) for i in range(3)]
    src = source(put(memory, "a.tar", tar_bytes(samples)), video="mp4", text="json.caption")
    sizes: list[int] = []
    original = shards.MemberRef.read

    def spy(self, key: str) -> bytes:  # type: ignore[no-untyped-def]
        sizes.append(self.size)
        return original(self, key)

    monkeypatch.setattr(shards.MemberRef, "read", spy)
    assert list(src.texts()) == ["c0", "c1", "c2"] and 5000 not in sizes
    sizes.clear()
    assert [s["__key__"] for s in src.iter_raw()] == ["k0", "k1", "k2"] and sizes == []


# --- split shards in the training stream ---------------------------------------------------


class CaptionLength(Processor):
    """A caption's length and an augmentation draw, so tensors show the sample and its rng."""

    def process(self, value: Any, *, key: str, train: bool, rng: random.Random) -> dict:
        return {"value": torch.tensor([len(value), rng.randint(0, 10**6)])}

    def collate(self, items: list) -> dict:
        return {"value": torch.stack([i["value"] for i in items])}


def split_plan(src: WebDatasetSource, world: int, workers: int, batch_size: int = 2) -> StreamPlan:
    return StreamPlan(
        ["wds"],
        [1.0],
        [None],
        seed=0,
        batch_size=batch_size,
        group=world,
        world=world,
        workers=workers,
        split=split_sources([src], world * workers),
    )


Batches = list[tuple[list[str], list[list[int]]]]


def rank_batches(
    src: WebDatasetSource, plan: StreamPlan, rank: int, stop: int, worker: int | None = None
) -> Batches:
    """One rank's micro-batches through a real DataLoader, or (``worker`` given) one worker's,
    run in this process with a faked worker info."""
    decoder = SampleDecoder({"text": CaptionLength()}, train=True)
    stream = TrainStream([src], plan, decoder, stop=stop, rank=rank, world=plan.world)
    batches: Any = make_train_loader(stream, plan.workers) if worker is None else stream
    info = SimpleNamespace(id=worker, num_workers=plan.workers)
    with pytest.MonkeyPatch.context() as patch:
        if worker is not None:
            patch.setattr(core_stream, "get_worker_info", lambda: info)
        return [(b["__keys__"], b["text"]["value"].tolist()) for b in batches]


def test_split_shards_give_each_reader_only_its_own_shards(memory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for index, shard in enumerate(caption_shards(4, 6)):
        put(memory, f"p{index}.tar", shard)
    src = source(f"memory://{memory}/p{{0..3}}.tar")
    opened: list[str] = []
    original = webdataset_source.read_shard

    def spy(url: str, *args: Any) -> Any:
        opened.append(url)
        return original(url, *args)

    monkeypatch.setattr(webdataset_source, "read_shard", spy)
    epoch: list[str] = []
    for rank in range(2):  # 2 ranks x 2 workers = 4 readers, one shard each
        per_worker = []
        for worker in range(2):
            opened.clear()
            batches = rank_batches(src, split_plan(src, 2, 2), rank, stop=6, worker=worker)
            assert set(opened) == {src.urls[rank * 2 + worker]}, (rank, worker)
            keys = [k for keys, _ in batches for k in keys]  # 3 micro-batches: one shard
            assert len(keys) == 6 and {k[:2] for k in keys} == {f"s{rank * 2 + worker}"}
            epoch += keys
            per_worker.append(batches)
        interleaved = [b for pair in zip(*per_worker, strict=True) for b in pair]
        assert rank_batches(src, split_plan(src, 2, 2), rank, stop=6) == interleaved
    assert sorted(epoch) == sorted(s["__key__"] for s in src.iter_raw())  # each sample once


@pytest.mark.parametrize("shuffle", [0, 3])
def test_split_stream_resumes_micro_batches_exactly(memory, shuffle) -> None:  # type: ignore[no-untyped-def]
    for index, data in enumerate(caption_shards(5, 3)):  # uneven: reader 0 gets 2 shards
        put(memory, f"p{index}.tar", data)
    spec = WebDatasetSpec(
        urls=f"memory://{memory}/p{{0..4}}.tar",
        fields={"text": "json.caption"},
        shuffle_buffer=shuffle,
    )
    src = WebDatasetSource(spec)
    whole = [rank_batches(src, split_plan(src, 2, 2), rank, stop=9) for rank in range(2)]
    for stop_after in (3, 4):  # 3: worker 0 now serves reader slot 1; 4: past an epoch
        tracker = split_plan(src, 2, 2)
        for _ in range(stop_after * 2):  # as the runner: every rank's micro-batches
            tracker.next_micro_batch()
        saved = json.loads(json.dumps(tracker.state_dict()))
        assert saved["readers"] == 4 and sum(saved["reader_cursors"][0]) == stop_after * 4
        for rank in range(2):
            plan = split_plan(src, 2, 2)
            plan.load_state(saved)
            resumed = rank_batches(WebDatasetSource(spec), plan, rank, stop=9)
            assert resumed == whole[rank][stop_after:]


@pytest.mark.parametrize("shuffle", [0, 4])
def test_split_position_skips_like_reading(memory, shuffle) -> None:  # type: ignore[no-untyped-def]
    for index, count in enumerate([3, 0, 5, 2]):  # uneven, one empty
        samples = [caption_sample(f"s{index}-{i}") for i in range(count)]
        put(memory, f"p{index}.tar", tar_bytes(samples))
    spec = WebDatasetSpec(
        urls=f"memory://{memory}/p{{0..3}}.tar",
        fields={"text": "json.caption"},
        shuffle_buffer=shuffle,
    )
    for reader in range(2):
        src = WebDatasetSource(spec)
        everything = list(itertools.islice(src.split_stream(reader, 2), 40))
        for skip in range(0, 30, 3):
            share = WebDatasetSource(spec).split_stream(reader, 2, skip)
            assert share is not None
            keys = [s["__key__"] for s in itertools.islice(share, 8)]
            assert keys == [s["__key__"] for s in everything[skip : skip + 8]], (reader, skip)


def test_too_few_shards_to_split_names_both_fixes(memory: str) -> None:
    for index, data in enumerate(caption_shards(2, 4)):
        put(memory, f"p{index}.tar", data)
    src = source(f"memory://{memory}/p{{0..1}}.tar")
    with pytest.raises(DataError) as info:
        split_sources([src], 4)
    assert str(info.value) == (
        f"2 webdataset shard(s) ('memory://{memory}/p0.tar' and 1 more) cannot be split among "
        "4 readers (processes x data.num_workers) with split_shards: true; write at least 4 "
        "shards, or set split_shards: false (every reader then reads every shard) or use fewer "
        "data.num_workers"
    )
    unsplit = WebDatasetSource(src.config.model_copy(update={"split_shards": False}))
    assert split_sources([unsplit], 4) == [False] and unsplit.split_stream(0, 4) is None


def shards_spec(shards: list[Path], *overrides: str):  # type: ignore[no-untyped-def]
    registry = load_plugins(entry_points=False)
    spec_source = {
        "type": "webdataset",
        "urls": [str(p) for p in shards],
        "fields": {"image": "png", "text": "json.text"},
        "shuffle_buffer": 4,
    }
    base = [f"data.sources.train={json.dumps(spec_source)}", "data.batch_size=4"]
    return registry, load_spec("clip-tiny", [*base, *overrides], registry)


def test_runner_resumes_split_shards_exactly_and_only_with_the_same_workers(
    shapes_manifest: Path, tmp_path: Path
) -> None:
    shards = pack_manifest(
        shapes_manifest, tmp_path / "shards", shard_size=24, progress=False
    ).shards
    assert len(shards) == 4
    runs = {"whole": ["train.steps=6"], "resumed": ["train.steps=3"]}
    for name, steps in runs.items():
        registry, spec = shards_spec(shards, *steps, "data.num_workers=2")
        train(spec, tmp_path / name, registry=registry, show_progress=False)
    registry, spec = shards_spec(shards, "train.steps=6", "data.num_workers=2")
    train(spec, tmp_path / "resumed", registry=registry, resume=True, show_progress=False)
    final = [
        load_file(tmp_path / run / "checkpoints" / "step-00000006" / "model.safetensors")
        for run in runs
    ]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])
    state, _ = load_state(tmp_path / "resumed" / "checkpoints" / "step-00000006", 0)
    assert state["data"]["readers"] == 2  # the split path, two workers
    assert sum(state["data"]["reader_cursors"][0]) == state["data"]["cursors"][0] == 6 * 4
    registry, spec = shards_spec(shards, "train.steps=9", "data.num_workers=0")
    with pytest.raises(DataError) as info:
        train(spec, tmp_path / "resumed", registry=registry, resume=True, show_progress=False)
    assert str(info.value) == (
        "cannot resume the data stream: split source(s) ['train'] were read by 2 readers "
        "(processes x DataLoader workers) and this run has 1; resume with the same "
        "data.num_workers (2) as the checkpoint"
    )
