"""The 5-caption retrieval protocol at COCO 5K size, chunked vs unchunked: time and memory.

Scores ``--images`` images (5,000) against ``--captions`` captions per image (5: 25,000
captions) from random L2-normalised D=256 embeddings (each caption is its image's embedding
plus noise, so the recalls are neither 0 nor 1), in both directions, as the retrieval evaluator
does with ``match_by: item``:

* **chunked**: the evaluator's `sharded_ranks` (``chunk_size`` queries at a time, positives
  built per chunk by `Matches`), text-to-image then image-to-text with the `Swapped` scorer;
* **unchunked**: the reference: the full (25,000, 5,000) score matrix and dense positives given
  to `modaloom.evaluation.retrieval_metrics`, in both directions.

Both give the same metrics (compared; with DSL the chunked normaliser may round differently,
which can move near-ties). Each mode runs in a fresh interpreter; memory is the growth of the
resident set during scoring (the kernel's high-water mark ``VmHWM``, reset through
``/proc/self/clear_refs`` just before) and the process's whole peak. When the unchunked
reference would not fit in ``--unchunked-limit-mib`` (default: half the available memory), it
runs on fewer images and its time and memory are **extrapolated** by the ratio of (caption,
image) pairs; the output says so. One torch thread by default (``--threads 0``: torch's
default), as on a shared two-core machine the timings of two threads mean little.

    python benchmarks/eval_protocols.py
    python benchmarks/eval_protocols.py --images 1000 --dsl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from modaloom.core.interfaces import Objective
from modaloom.core.metrics import Matches, recall_metrics, retrieval_metrics
from modaloom.plugins.evaluators.retrieval import Swapped, sharded_ranks

MIB = 2**20
NOISE = 0.3
"""Per-dimension noise of a caption around its image (sets the recalls well below 1 at 5K)."""
BYTES_PER_PAIR = 15
"""Unchunked bytes per (caption, image) pair: scores (4), their masked copy (4), positives and
the comparison masks (1 each)."""


class OneProcess:
    """The part of `EvalContext` `sharded_ranks` uses, for a single process."""

    def map_shards(self, total: int, function: Any) -> list[Any]:
        return [function(0, total)]


def embeddings(images: int, captions: int, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(image (I, D), caption (I * N, D), caption_item (I * N,))``, seeded."""
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(images, dim, generator=g), dim=-1)
    item = torch.arange(images).repeat_interleave(captions)
    noise = torch.randn(images * captions, dim, generator=g) * NOISE
    return image, F.normalize(image[item] + noise, dim=-1), item


def chunked(image: Tensor, caption: Tensor, item: Tensor, args: argparse.Namespace) -> list[Any]:
    """Both directions as the evaluator ranks them."""
    matches = Matches(item, torch.arange(len(image)))
    temperature = args.temperature if args.dsl else None
    ctx: Any = OneProcess()
    sides = ({"embedding": caption}, {"embedding": image})
    t2i = sharded_ranks(ctx, Objective(), sides, matches, args.chunk, temperature)
    back = (sides[1], sides[0])
    i2t = sharded_ranks(ctx, Swapped(Objective()), back, matches.transposed(), args.chunk,
                        temperature)  # fmt: skip
    return [recall_metrics(t2i), recall_metrics(i2t)]


def unchunked(image: Tensor, caption: Tensor, item: Tensor, args: argparse.Namespace) -> list[Any]:
    """Both directions from the whole score matrix and dense positives."""
    scores = caption @ image.T  # (C, I)
    positives = item[:, None] == torch.arange(len(image))[None, :]
    if args.dsl:
        t2i = scores * torch.softmax(scores / args.temperature, dim=0)
        i2t = scores.T * torch.softmax(scores.T / args.temperature, dim=0)
        return [retrieval_metrics(t2i, positives), retrieval_metrics(i2t, positives.T)]
    return [retrieval_metrics(scores, positives), retrieval_metrics(scores.T, positives.T)]


def status_kib(field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(mode: str, images: int, args: argparse.Namespace) -> dict[str, Any]:
    """One scoring of ``images`` images in this process: seconds, memory, metrics."""
    if args.threads:
        torch.set_num_threads(args.threads)
    image, caption, item = embeddings(images, args.captions, args.dim)
    run = chunked if mode == "chunked" else unchunked
    with torch.no_grad():
        run(image[:8], caption[: 8 * args.captions], item[: 8 * args.captions], args)  # warm up
        Path("/proc/self/clear_refs").write_text("5")
        before = status_kib("VmRSS")
        start = time.perf_counter()
        metrics = run(image, caption, item, args)
        seconds = time.perf_counter() - start
    peak = status_kib("VmHWM")
    return {
        "seconds": seconds,
        "growth": (peak - before) * 1024,
        "peak": peak * 1024,
        "metrics": metrics,
    }


def run_child(mode: str, images: int, args: argparse.Namespace) -> dict[str, Any]:
    """`measure` in a fresh interpreter, so its memory mark is its own."""
    options = ["--captions", str(args.captions), "--dim", str(args.dim)]
    options += ["--chunk", str(args.chunk), "--threads", str(args.threads)]
    options += ["--temperature", str(args.temperature)] + (["--dsl"] if args.dsl else [])
    command = [sys.executable, __file__, "--measure", mode, str(images), *options]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} {images} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def available_mib() -> float:
    """``MemAvailable`` of /proc/meminfo, in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 4096.0


def reference(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The unchunked run at full size, or at the largest size that fits, scaled up by the ratio
    of pairs; with the number of images actually scored."""
    limit = args.unchunked_limit_mib or available_mib() / 2
    images = args.images
    while images * images * args.captions * BYTES_PER_PAIR / MIB > limit:
        images //= 2
    result = run_child("unchunked", images, args)
    scale = (args.images / images) ** 2
    result.update(seconds=result["seconds"] * scale, growth=result["growth"] * scale)
    return result, images


def describe(metrics: list[dict[str, float]]) -> str:
    """``t2i r1/r5/r10 medr meanr | i2t ...`` in percent and ranks."""
    parts = []
    for name, m in zip(("t2i", "i2t"), metrics, strict=True):
        recalls = "/".join(f"{100 * m[f'r{k}']:.2f}" for k in (1, 5, 10))
        parts.append(f"{name} R@1/5/10 {recalls} medr {m['medr']:.0f} meanr {m['meanr']:.2f}")
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions", type=int, default=5, help="captions per image")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=512, help="the evaluator's chunk_size")
    parser.add_argument("--threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--dsl", action="store_true", help="dual-softmax re-scoring")
    parser.add_argument("--temperature", type=float, default=0.01, help="DSL temperature")
    parser.add_argument("--unchunked-limit-mib", type=float, default=0.0)
    parser.add_argument("--measure", nargs=2, metavar=("MODE", "IMAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args)))
        return
    pairs = args.images * args.images * args.captions
    print(
        f"5-caption retrieval protocol{' with DSL' if args.dsl else ''}: {args.images:,} images "
        f"x {args.images * args.captions:,} captions, D={args.dim}, both directions, "
        f"chunk={args.chunk}, torch threads={args.threads or torch.get_num_threads()}, CPU"
    )
    small = run_child("chunked", args.images, args)
    full, images = reference(args)
    estimated = images != args.images
    rows = [("chunked", small, ""), ("unchunked", full, "")]
    if estimated:
        need = pairs * BYTES_PER_PAIR / MIB
        note = f"EXTRAPOLATED x{pairs / (images**2 * args.captions):.0f} from {images:,} images"
        rows[1] = ("unchunked", full, f"{note} (it would need ~{need:,.0f} MiB)")
    print(f"{'mode':<10} {'time s':>8} {'growth MiB':>11} {'process peak MiB':>17}")
    for name, result, note in rows:
        peak = "-" if estimated and name == "unchunked" else f"{result['peak'] / MIB:,.0f}"
        print(
            f"{name:<10} {result['seconds']:>8.2f} {result['growth'] / MIB:>11,.0f} {peak:>17} "
            f"{note}".rstrip()
        )
    print(
        f"unchunked / chunked: time {full['seconds'] / small['seconds']:.2f}x, memory growth "
        f"{full['growth'] / max(small['growth'], 1):.1f}x"
    )
    print(f"chunked metrics:   {describe(small['metrics'])}")
    if not estimated:
        gap = max(
            abs(a[key] - b[key])
            for a, b in zip(small["metrics"], full["metrics"], strict=True)
            for key in a
        )
        same = "identical" if gap == 0 else f"largest difference {gap:.2g}: rounding near ties"
        print(f"unchunked metrics: {describe(full['metrics'])} ({same})")
    verdict = "under" if small["peak"] < 2 * 2**30 else "OVER"
    print(f"chunked process peak {small['peak'] / MIB:,.0f} MiB: {verdict} the 2 GB target")


if __name__ == "__main__":
    main()
