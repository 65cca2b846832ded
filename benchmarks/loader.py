"""Benchmark: digits-av clips (video + audio + text) per second through the full training loader.

Builds (or reuses) the digits-av set, then runs the real data path the runner uses:
`TrainStream` + `make_train_loader` + the video, audio and text processors (8 frames of 32x32,
one 1 s log-Mel clip, a WordPiece tokenizer trained on the captions), with 0, 1 and 2 DataLoader
workers, and prints samples per second with the ratio against 0 workers measured in the same
run. Two sources over the same data:

* ``map``: the ``digits_av`` source (held in memory, map-style): each worker fetches only the
  samples of its own micro-batches.
* ``webdataset``: the ``webdataset`` source over the set's tar shards (streaming): every worker
  reads every sample's tar headers and decodes only its own micro-batches.

A few samples are decoded before timing (first decodes in a process are slow); each setting runs
``--repeats`` times, the settings taking turns, and the best rate is kept (other jobs on a shared
machine add noise; run one setting after the other, a slow spell hit one of them only).
Rates counted after each worker's first micro-batch are the loader's throughput once running
(``samples/s``, the ratio users see over a training run, where workers start once);
``incl. start`` counts from creating the loader, and ``first batch`` is the latency to the
first micro-batch. The main process runs with ``--threads`` torch threads (default 1, what
DataLoader workers use), so 0 workers is a fair baseline: on a busy 2-core machine, torch's
default intra-op threads made the audio filterbank about 6x slower in the main process
(30 ms instead of 5 ms per clip).

Usage: ``python benchmarks/loader.py [--help]``.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import torch

from modaloom.core.data import SampleDecoder
from modaloom.core.interfaces import DataContext, Processor, Source
from modaloom.core.stream import StreamPlan, TrainStream, make_train_loader
from modaloom.modalities.audio import AudioSpec, make_audio_processor
from modaloom.modalities.text import TextSpec, make_text_processor
from modaloom.modalities.video import VideoSpec, make_video_processor
from modaloom.plugins.sources.digits_av import (
    CLIP_FIELDS,
    DigitsAvSpec,
    ensure_digits_av,
    make_digits_av_source,
)
from modaloom.plugins.sources.webdataset import WebDatasetSource, WebDatasetSpec


def processors(source: Source, frames: int, size: int) -> dict[str, Processor]:
    """Video, audio and text processors (the tokenizer is trained on the source's captions)."""
    return {
        "video": make_video_processor(VideoSpec(frames=frames, size=size), DataContext()),
        "audio": make_audio_processor(
            AudioSpec(clip_seconds=1.0, target_length=100), DataContext()
        ),
        "text": make_text_processor(TextSpec(vocab_size=200), DataContext(texts=source.texts)),
    }


def warm_up(source: Source, procs: dict[str, Processor], count: int) -> None:
    """Decode a few samples first: the first decodes of a process are several times slower
    (codec and kernel set-up), and forked workers inherit the warmed-up state."""
    decoder = SampleDecoder(procs, train=True)
    for index, raw in enumerate(source.iter_raw()):
        decoder.decode(raw, random.Random(index))
        if index + 1 >= count:
            return


def measure(
    source: Source, procs: dict[str, Processor], workers: int, batch_size: int, micro_batches: int
) -> tuple[float, float, float]:
    """(samples per second once running, samples per second from the start, seconds to the
    first micro-batch) of one loader run. Once running counts from the arrival of each worker's
    first micro-batch (workers start together, so their first batches arrive together), leaving
    out starting the workers, which a training run does once."""
    plan = StreamPlan(
        ["digits"], [1.0], [len(source) if source.is_map_style else None], 0, batch_size
    )
    stream = TrainStream([source], plan, SampleDecoder(procs, train=True), stop=micro_batches)
    started = time.perf_counter()
    first, running, running_size, samples = 0.0, 0.0, 0, 0
    for index, batch in enumerate(make_train_loader(stream, workers)):
        samples += len(batch["__keys__"])
        if index == 0:
            first = time.perf_counter() - started
        if index == max(workers, 1) - 1:
            running, running_size = time.perf_counter() - started, samples
    elapsed = time.perf_counter() - started
    return (samples - running_size) / (elapsed - running), samples / elapsed, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", default=None, help="digits-av directory (default cache)")
    parser.add_argument("--num-train", type=int, default=3000, help="train clips of the set")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batches", type=int, default=30, help="per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; best is kept")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--sources", default="map,webdataset", help="map and/or webdataset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    info = ensure_digits_av(args.cache_dir, num_train=args.num_train)
    ready = time.perf_counter() - started
    print(
        f"digits-av at {info.root}: {info.counts}, {info.total_bytes / 1e6:.1f} MB "
        f"(ready in {ready:.1f} s; built in {info.build_seconds} s)"
    )
    sources: dict[str, Source] = {}
    if "map" in args.sources:
        spec = DigitsAvSpec(cache_dir=info.root, num_train_clips=args.num_train)
        sources["map"] = make_digits_av_source(spec)
    if "webdataset" in args.sources:
        wds = WebDatasetSpec(urls=info.urls("clips", "train"), fields=CLIP_FIELDS)
        sources["webdataset"] = WebDatasetSource(wds)
    counts = [int(n) for n in args.workers.split(",")]
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.threads} torch "
        f"thread(s) in the main process; batch {args.batch_size} x {args.micro_batches} "
        f"micro-batches per run, best of {args.repeats}"
    )
    print(
        f"{'source':<11} {'workers':>7} {'samples/s':>10} {'vs 0':>6} {'incl. start':>12} "
        f"{'vs 0':>6} {'first batch':>12}"
    )
    for name, source in sources.items():
        procs = processors(source, args.frames, args.size)
        warm_up(source, procs, args.batch_size)
        runs: dict[int, list[tuple[float, float, float]]] = {workers: [] for workers in counts}
        for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every count
            for workers in counts:
                runs[workers].append(
                    measure(source, procs, workers, args.batch_size, args.micro_batches)
                )
        baseline = None
        for workers in counts:
            steady, overall, first = max(runs[workers])
            baseline = (steady, overall) if workers == 0 else baseline
            ratios = [
                f"{new / old:.2f}x" if baseline else "-"
                for new, old in zip((steady, overall), baseline or (1.0, 1.0), strict=True)
            ]
            print(
                f"{name:<11} {workers:>7} {steady:>10.1f} {ratios[0]:>6} {overall:>12.1f} "
                f"{ratios[1]:>6} {first:>10.2f} s"
            )


if __name__ == "__main__":
    main()
