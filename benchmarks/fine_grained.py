"""Benchmark: chunked vs unchunked fine-grained (MGA, SPEC B7) scoring of a retrieval gallery.

Scores every text against every video (30 text tokens, 8 frames, D = 256) under
``torch.no_grad`` on CPU, each variant in its own subprocess so that its peak memory is the
growth of that process's peak RSS (``resource.getrusage``) over its RSS just before scoring.

The unchunked einsum needs ``Bt * Bx * Nt * Nx`` floats (5,000 x 5,000 x 30 x 8 x 4 bytes =
24 GB), more than this machine has, so it is measured at ``--baseline-size`` only and its
memory at ``--size`` is **extrapolated** (quadratic in the gallery size). Run::

    python benchmarks/fine_grained.py                      # 5,000 gallery, 1,000 baseline
    python benchmarks/fine_grained.py --size 2000 --chunk 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from modaloom.objectives.functional import fine_grained_similarity

MIB = 2**20


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def measure(size: int, chunk: int | None, tokens: int, frames: int, dim: int) -> dict[str, float]:
    """Score a size x size gallery once; returns seconds and peak memory growth in bytes."""
    g = torch.Generator().manual_seed(0)
    text = F.normalize(torch.randn(size, tokens, dim, generator=g), dim=-1)
    other = F.normalize(torch.randn(size, frames, dim, generator=g), dim=-1)
    lengths = torch.randint(5, tokens + 1, (size,), generator=g)
    text_mask = torch.arange(tokens)[None, :] < lengths[:, None]
    other_mask = torch.ones(size, frames, dtype=torch.bool)
    text_logits, other_logits = torch.randn(size, tokens), torch.randn(size, frames)
    with torch.no_grad():
        small = slice(0, 8)  # warm up threads and kernels outside the measurement
        fine_grained_similarity(
            text[small],
            text_mask[small],
            text_logits[small],
            other[small],
            other_mask[small],
            other_logits[small],
            chunk,
        )
        baseline = _rss_bytes()
        start = time.perf_counter()
        scores = fine_grained_similarity(
            text, text_mask, text_logits, other, other_mask, other_logits, chunk
        )
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    assert scores.shape == (size, size)
    return {"seconds": seconds, "peak_bytes": float(max(peak - baseline, 0))}


def run_variant(args: argparse.Namespace, size: int, chunk: int | None) -> dict[str, float]:
    """Run :func:`measure` in a fresh interpreter so that peak RSS belongs to this variant."""
    command = [
        sys.executable,
        __file__,
        "--measure",
        "--size",
        str(size),
        "--chunk",
        str(chunk or 0),
        "--tokens",
        str(args.tokens),
        "--frames",
        str(args.frames),
        "--dim",
        str(args.dim),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _describe(name: str, size: int, result: dict[str, float]) -> str:
    peak = result["peak_bytes"] / MIB
    return f"{name:<10} {size:>6} x {size:<6} {result['seconds']:9.2f} s  {peak:10.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run the three measurements and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5000, help="gallery size for chunked scoring")
    parser.add_argument("--baseline-size", type=int, default=1000, help="largest unchunked size")
    parser.add_argument("--chunk", type=int, default=256, help="block size; 0 = unchunked")
    parser.add_argument("--tokens", type=int, default=30, help="text tokens Nt")
    parser.add_argument("--frames", type=int, default=8, help="frames Nx")
    parser.add_argument("--dim", type=int, default=256, help="feature width D")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    chunk = args.chunk or None
    if args.measure:
        print(json.dumps(measure(args.size, chunk, args.tokens, args.frames, args.dim)))
        return
    small = min(args.baseline_size, args.size)
    print(
        f"fine-grained scoring, Nt={args.tokens} Nx={args.frames} D={args.dim}, "
        f"chunk={args.chunk}, torch threads={torch.get_num_threads()}, CPU"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} (other processes skew the times)")
    print(f"{'variant':<10} {'gallery':^15} {'time':>11}  {'peak memory':>14}")
    unchunked = run_variant(args, small, None)
    chunked_small = run_variant(args, small, chunk)
    chunked_large = run_variant(args, args.size, chunk)
    print(_describe("unchunked", small, unchunked))
    print(_describe("chunked", small, chunked_small))
    print(_describe("chunked", args.size, chunked_large))
    scale = (args.size / small) ** 2
    needed = args.size**2 * args.tokens * args.frames * 4 / MIB
    ratio_time = chunked_small["seconds"] / unchunked["seconds"]
    ratio_mem = unchunked["peak_bytes"] / max(chunked_small["peak_bytes"], 1.0)
    print(
        f"at {small} x {small}: chunked/unchunked time = {ratio_time:.2f}, "
        f"unchunked/chunked peak memory = {ratio_mem:.1f}"
    )
    print(
        f"at {args.size} x {args.size}: unchunked peak memory EXTRAPOLATED (x{scale:.0f} from "
        f"{small}) = {unchunked['peak_bytes'] * scale / MIB:,.0f} MiB (score tensor alone "
        f"{needed:,.0f} MiB), measured chunked = {chunked_large['peak_bytes'] / MIB:,.0f} MiB, "
        f"ratio = {unchunked['peak_bytes'] * scale / max(chunked_large['peak_bytes'], 1.0):.0f}"
    )


if __name__ == "__main__":
    main()
