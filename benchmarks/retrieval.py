"""Retrieval ranking at growing gallery sizes: time and peak memory of `best_correct_ranks`.

Ranks ``--queries`` queries (1,000 by default) against N gallery items (query i's correct item
is item i), one direction, under ``torch.no_grad`` on CPU, with:

* **dot**: a dot-product scorer (the `Objective.retrieval_scores` default) on random
  L2-normalised (N, D) embeddings;
* **mga**: VALOR's fine-grained scoring, `fine_grained_similarity` with ``--mga-block`` blocks,
  on random L2-normalised (N, Nt, D) token and (N, Nx, D) frame features with random padding of
  the text and random weight logits.

`best_correct_ranks` scores ``--chunk`` queries at a time (the evaluator's ``chunk_size``), so
its memory should grow with chunk x N, not queries x N, and its time linearly with the number
of (query, item) pairs. The retrieval evaluator ranks all N samples against all N: that time is
printed as ``N x N s``, **extrapolated** linearly from the measured queries (ranking N x N at
100,000 would take minutes on two cores). Times are the best of ``--repeats`` rankings (fewer
once 10 s are spent on a size), with one torch thread by default: on a shared two-core machine
two OpenMP threads stall whenever another process takes a core, and the times stop meaning
anything (``--threads 0`` uses torch's default). Each measurement runs in a fresh interpreter;
peak memory is the growth of the resident set during ranking: the kernel's high-water mark
(``VmHWM``) is reset through ``/proc/self/clear_refs`` just before ranking and read after it.

    python benchmarks/retrieval.py                       # dot 1k/10k/100k, mga 1k/5k/10k
    python benchmarks/retrieval.py --dot-sizes 1000 10000 --mga-sizes 1000 5000 --queries 500
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
from torch import Tensor

from modaloom.core.interfaces import Objective
from modaloom.core.metrics import Matches, chunked_ranks
from modaloom.objectives.fine_grained_similarity import fine_grained_similarity

MIB = 2**20
REPEAT_BUDGET_S = 10.0


class FineGrainedScorer(Objective):
    """Scores with `fine_grained_similarity` in ``block`` x ``block`` blocks (texts as queries)."""

    def __init__(self, block: int | None) -> None:
        super().__init__()
        self.block = block

    def retrieval_scores(self, query: dict[str, Tensor], target: dict[str, Tensor]) -> Tensor:
        """(Q, T) fine-grained similarities."""
        return fine_grained_similarity(
            query["tokens"],
            query["mask"],
            query["logits"],
            target["tokens"],
            target["mask"],
            target["logits"],
            self.block,
        )


def best_correct_ranks(
    scorer: Objective,
    query: dict[str, Tensor],
    target: dict[str, Tensor],
    query_ids: Tensor,
    target_ids: Tensor,
    chunk: int,
) -> Tensor:
    """The retrieval evaluator's ranking (`chunked_ranks`): 1-based rank of each query's best
    target with its id, ``chunk`` queries at a time, (Q,)."""

    def scores(start: int, stop: int) -> Tensor:
        return scorer.retrieval_scores({k: v[start:stop] for k, v in query.items()}, target)

    matches = Matches(query_ids, target_ids)
    return chunked_ranks(scores, matches.rows, range(len(query_ids)), chunk)


def dot_sides(
    queries: int, size: int, dim: int, g: torch.Generator
) -> tuple[dict[str, Tensor], ...]:
    """Random L2-normalised query (Q, D) and gallery (N, D) embeddings."""
    query = F.normalize(torch.randn(queries, dim, generator=g), dim=-1)
    target = F.normalize(torch.randn(size, dim, generator=g), dim=-1)
    return {"embedding": query}, {"embedding": target}


def mga_sides(
    queries: int, size: int, tokens: int, frames: int, dim: int, g: torch.Generator
) -> tuple[dict[str, Tensor], ...]:
    """Random text-token (Q, Nt, D) and frame (N, Nx, D) features with masks and logits."""
    lengths = torch.randint(5, tokens + 1, (queries,), generator=g)
    query = {
        "tokens": F.normalize(torch.randn(queries, tokens, dim, generator=g), dim=-1),
        "mask": torch.arange(tokens)[None, :] < lengths[:, None],
        "logits": torch.randn(queries, tokens, generator=g),
    }
    target = {
        "tokens": F.normalize(torch.randn(size, frames, dim, generator=g), dim=-1),
        "mask": torch.ones(size, frames, dtype=torch.bool),
        "logits": torch.randn(size, frames, generator=g),
    }
    return query, target


def _status_kib(field: str) -> int:
    """A ``VmRSS`` / ``VmHWM`` line of /proc/self/status, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process; False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(kind: str, size: int, args: argparse.Namespace) -> dict[str, float]:
    """Rank the queries against a gallery of ``size`` once; seconds and peak RSS growth."""
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    queries = min(args.queries, size)
    if kind == "dot":
        scorer, (query, target) = Objective(), dot_sides(queries, size, args.dim, g)
    else:
        scorer = FineGrainedScorer(args.mga_block)
        query, target = mga_sides(queries, size, args.tokens, args.frames, args.dim, g)
    ids = torch.arange(size)
    with torch.no_grad():
        small = {k: v[:8] for k, v in query.items()}  # warm up threads and kernels
        best_correct_ranks(
            scorer, small, {k: v[:8] for k, v in target.items()}, ids[:8], ids[:8], 4
        )
        exact = reset_peak()
        before = _status_kib("VmRSS")
        times: list[float] = []
        while len(times) < args.repeats and sum(times) < REPEAT_BUDGET_S:
            start = time.perf_counter()
            ranks = best_correct_ranks(scorer, query, target, ids[:queries], ids, args.chunk)
            times.append(time.perf_counter() - start)
        seconds = min(times)
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert ranks.shape == (queries,) and int(ranks.min()) >= 0
    return {"seconds": seconds, "peak_bytes": float(max(peak - before, 0) * 1024)}


def run_child(kind: str, size: int, args: argparse.Namespace) -> dict[str, float]:
    """:func:`measure` in a fresh interpreter, so that the memory mark is this size's alone."""
    options = ["--chunk", str(args.chunk), "--dim", str(args.dim), "--tokens", str(args.tokens)]
    options += ["--queries", str(args.queries), "--bound-queries", "0"]
    options += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    options += ["--frames", str(args.frames), "--mga-block", str(args.mga_block or 0)]
    command = [sys.executable, __file__, "--measure", kind, str(size), *options]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {size} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bound_bytes(kind: str, size: int, args: argparse.Namespace) -> float:
    """The score chunk chunk x N (float32), plus one MGA block (block^2 x Nt x Nx)."""
    chunk = min(args.chunk, args.queries, size) * size * 4
    if kind == "mga":
        block = min(args.mga_block or size, size)
        chunk += block * block * args.tokens * args.frames * 4
    return float(chunk)


def check_bound(size: int, args: argparse.Namespace) -> None:
    """Rank ``--bound-queries`` queries against the largest dot gallery: peak stays put."""
    wide = argparse.Namespace(**{**vars(args), "queries": args.bound_queries})
    few, many = run_child("dot", size, args), run_child("dot", size, wide)
    print(
        f"dot gallery {size:,}: {args.bound_queries:,} queries peak "
        f"{many['peak_bytes'] / MIB:.1f} MiB vs {args.queries:,} queries "
        f"{few['peak_bytes'] / MIB:.1f} MiB (ratio {many['peak_bytes'] / few['peak_bytes']:.2f}; "
        f"the {args.bound_queries:,} x N score matrix would be "
        f"{args.bound_queries * size * 4 / MIB:,.0f} MiB); time ratio "
        f"{many['seconds'] / few['seconds']:.1f} for {args.bound_queries / args.queries:.0f}x "
        "the queries"
    )


def report(kind: str, sizes: list[int], args: argparse.Namespace) -> None:
    """Measure every size and print one row each, with ratios to the first size."""
    print(
        f"{'kind':<4} {'gallery N':>9} {'queries':>8} {'time s':>8} {'x first':>8} "
        f"{'N x N s':>9} {'peak MiB':>9} {'x first':>8} {'chunk MiB':>10} {'Q x N MiB':>10}"
    )
    first: dict[str, float] | None = None
    for size in sizes:
        result = run_child(kind, size, args)
        first = first or result
        queries = min(args.queries, size)
        time_ratio = result["seconds"] / first["seconds"]
        memory_ratio = result["peak_bytes"] / max(first["peak_bytes"], 1.0)
        full = result["seconds"] * size / queries
        print(
            f"{kind:<4} {size:>9,} {queries:>8,} {result['seconds']:>8.2f} {time_ratio:>8.1f} "
            f"{full:>9.1f} {result['peak_bytes'] / MIB:>9.1f} {memory_ratio:>8.1f} "
            f"{bound_bytes(kind, size, args) / MIB:>10.1f} {queries * size * 4 / MIB:>10,.0f}"
        )


def main(argv: list[str] | None = None) -> None:
    """Parse flags; measure one size (``--measure``) or run the whole table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot-sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--mga-sizes", type=int, nargs="*", default=[1000, 5000, 10000])
    parser.add_argument("--queries", type=int, default=1000, help="queries ranked per size")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 0 = torch's default (see the module docstring)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="best of this many rankings per size (fewer once 10 s are spent)",
    )
    parser.add_argument(
        "--bound-queries",
        type=int,
        default=5000,
        help="queries of the memory-bound check on the largest dot gallery; 0 skips it",
    )
    parser.add_argument("--chunk", type=int, default=512, help="queries scored at once")
    parser.add_argument("--mga-block", type=int, default=256, help="MGA block; 0 = unchunked")
    parser.add_argument("--dim", type=int, default=256, help="feature width D")
    parser.add_argument("--tokens", type=int, default=30, help="text tokens Nt (MGA)")
    parser.add_argument("--frames", type=int, default=8, help="frames Nx (MGA)")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mga_block = args.mga_block or None
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), args)))
        return
    print(
        f"best_correct_ranks, {args.queries} queries x N gallery items, one direction, "
        f"chunk={args.chunk} queries, "
        f"D={args.dim}; MGA Nt={args.tokens} Nx={args.frames} block={args.mga_block}; "
        f"torch threads={args.threads or torch.get_num_threads()}, CPU, load average before "
        f"{os.getloadavg()[0]:.2f} (other processes skew the times)"
    )
    print(
        "peak = resident-set growth during ranking; chunk = chunk x N float32 scores (+ one MGA "
        "block); Q x N = the score matrix an unchunked ranking of these queries would hold; "
        "N x N s = time to rank all N against all N, EXTRAPOLATED (x N / queries)"
    )
    if args.dot_sizes:
        report("dot", args.dot_sizes, args)
        if args.bound_queries:
            check_bound(max(args.dot_sizes), args)
    if args.mga_sizes:
        report("mga", args.mga_sizes, args)


if __name__ == "__main__":
    main()
