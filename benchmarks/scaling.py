"""Scaling: two CPU processes (torchrun, gloo) against one process on the same global batch.

Trains clip-tiny (ViT + BERT + ITC with negatives gathered across ranks) through the real CLI on
the same shapes data and seed, with dropout off:

* one process, ``data.batch_size=B``, 1 thread;
* ``torchrun --nproc_per_node 2``, ``data.batch_size=B/2`` per process, 1 thread each;
* with ``--threads N`` (N > 1), also one process with ``data.batch_size=B`` and N threads. It is
  off by default: on a shared two-core machine a process with two OpenMP threads stalls whenever
  another process takes a core (it measured 15 samples/s against 920 for one thread here).

Throughput is ``B`` samples per optimizer step over the steady part of the run: the
``elapsed_s`` that the runner logs in metrics.jsonl (main process clock, from the start of the
stage, so interpreter start-up, model building and the final checkpoint are excluded) between
the end of step ``--warmup`` and the last step. The runs include data decoding (each process
decodes its own half of the batch). The runs are repeated ``--repeats`` times in turn and the
best throughput of each is reported (other processes on a shared machine only slow a run down).
Loss agreement is the largest absolute difference between the logged losses of the two-process
run and of the one-process run(s), over every step.

    python benchmarks/scaling.py                    # B = 32, 60 steps, 2 repeats
    python benchmarks/scaling.py --batch-size 64 --steps 40 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_shapes

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DROPOUT_OFF = [
    f"model.components.{component}.config.{name}=0.0"
    for component in ("text", "vision")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob")
]


@dataclass
class RunResult:
    """One training run: its per-step losses and timings."""

    name: str
    losses: list[float]
    elapsed: list[float]
    wall_s: float

    def samples_per_s(self, global_batch: int, warmup: int) -> float:
        """Steady-state throughput between the end of step ``warmup`` and the last step."""
        steps = len(self.elapsed) - warmup
        return global_batch * steps / (self.elapsed[-1] - self.elapsed[warmup - 1])


def train_once(
    name: str,
    manifest: Path,
    output: Path,
    args: argparse.Namespace,
    processes: int,
    threads: int,
) -> RunResult:
    """Train clip-tiny through the CLI and read back its metrics.jsonl."""
    batch = args.batch_size // processes
    settings = [
        f"data.sources.train.path={manifest}",
        f"data.batch_size={batch}",
        f"train.steps={args.steps}",
        "train.log_every=1",
        f"train.checkpoint_every={args.steps}",
        *DROPOUT_OFF,
    ]
    cli = ["train", "clip-tiny", *[p for s in settings for p in ("--set", s)]]
    cli += ["--output", str(output), "--no-progress"]
    if processes == 1:
        command = [sys.executable, "-m", "modaloom", *cli]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launcher, "--nproc_per_node", str(processes), "-m", "modaloom", *cli]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout}\n{done.stderr}")
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    losses = [float(r["loss"]) for r in records]
    return RunResult(name, losses, [float(r["elapsed_s"]) for r in records], wall)


def max_abs_difference(a: list[float], b: list[float]) -> float:
    """Largest |a_i - b_i| over paired steps."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> None:
    """Run the trainings and print throughput and loss agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32, help="global batch B (even)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument(
        "--threads", type=int, default=1, help="also run one process with this many threads (> 1)"
    )
    parser.add_argument("--images", type=int, default=128, help="shape images to generate")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the runs")
    args = parser.parse_args(argv)
    if args.batch_size % 2 or not 0 < args.warmup < args.steps or args.repeats < 1:
        parser.error("--batch-size must be even, 0 < --warmup < --steps and --repeats >= 1")
    configurations = [("1 process, 1 thread", 1, 1), ("2 processes, 1 thread each", 2, 1)]
    if args.threads > 1:
        configurations.append((f"1 process, {args.threads} threads", 1, args.threads))
    load = os.getloadavg()[0]
    rates: dict[str, float] = {}
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_shapes(Path(tmp) / "data", args.images)
        for repeat in range(args.repeats):
            runs = []  # losses do not depend on the repeat: the last round's are compared
            for index, (name, processes, threads) in enumerate(configurations):
                output = Path(tmp) / f"run{repeat}-{index}"
                run = train_once(name, manifest, output, args, processes, threads)
                rate = run.samples_per_s(args.batch_size, args.warmup)
                rates[name] = max(rates.get(name, 0.0), rate)
                runs.append(run)
    one, two, *wide = runs
    print(
        f"clip-tiny, global batch {args.batch_size}, {args.steps} steps, timed steps "
        f"{args.warmup + 1}..{args.steps}, best of {args.repeats}, {os.cpu_count()} CPUs, "
        f"load average before {load:.2f} (other processes skew the times)"
    )
    print(f"{'run':<28} {'per-process batch':>17} {'samples/s':>10} {'last wall s':>11}")
    for (name, processes, _), run in zip(configurations, runs, strict=True):
        batch = args.batch_size // processes
        print(f"{name:<28} {batch:>17} {rates[name]:>10.1f} {run.wall_s:>11.1f}")
    biggest = max(abs(v) for v in one.losses)
    for base in (one, *wide):
        ratio = rates[two.name] / rates[base.name]
        print(f"throughput ratio 2 processes / {base.name}: {ratio:.2f}")
        print(
            f"loss agreement over {len(two.losses)} steps, 2 processes vs {base.name}: max |diff| "
            f"= {max_abs_difference(two.losses, base.losses):.2e} (losses up to {biggest:.2f})"
        )


if __name__ == "__main__":
    main()
