"""Runner overhead: seconds per step through the modaloom runner over a bare PyTorch loop.

Both loops train the same `LoomModel` (clip-tiny: ViT + BERT + ITC) on the same pre-decoded
batches, so data decoding is excluded from both; checkpoint writing is excluded from the runner
(it is I/O, not per-step overhead). Repetitions alternate bare/runner and the median is reported.

    python benchmarks/runner_overhead.py --steps 60 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from modaloom.core import runner as runner_module
from modaloom.core.data import SampleDecoder
from modaloom.core.optim import make_optimizer, make_scheduler
from modaloom.core.plugins import load_plugins
from modaloom.core.spec import load_spec
from modaloom.core.stream import StreamPlan, TrainStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_shapes


def decoded_batches(session: runner_module.TrainingSession, steps: int) -> list[dict[str, Any]]:
    spec = session.spec
    sources = list(session.sources.values())
    plan = StreamPlan(
        names=list(session.sources),
        weights=[1.0],
        lengths=[len(sources[0])],
        seed=0,
        batch_size=spec.data.batch_size,
    )
    stream = TrainStream(sources, plan, SampleDecoder(session.processors, train=True), stop=steps)
    return list(stream)


def bare_loop(session: runner_module.TrainingSession, batches: list[dict[str, Any]]) -> float:
    """nanoGPT-style loop: forward, backward, clip, step, schedule, zero_grad."""
    model = session.unwrapped
    train = session.spec.train
    optimizer = make_optimizer(model, train.optimizer)
    scheduler = make_scheduler(optimizer, len(batches), train.scheduler)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss = model({k: v for k, v in batch.items() if k != "__skipped__"}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        model.after_optimizer_step()
    return (time.perf_counter() - start) / len(batches)


def runner_loop(spec: Any, registry: Any, output: Path, batches: list[dict[str, Any]]) -> float:
    """The real `TrainingSession.run` with its loader replaced by the same decoded batches."""
    session = runner_module.setup_session(spec, output, registry, show_progress=False)
    session.save_checkpoint = lambda: None  # type: ignore[method-assign]
    original = runner_module.make_train_loader
    runner_module.make_train_loader = lambda *a, **k: [dict(b) for b in batches]  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        session.run()
        return (time.perf_counter() - start) / len(batches)
    finally:
        runner_module.make_train_loader = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    registry = load_plugins()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_shapes(Path(tmp) / "data", 128)
        spec = load_spec(
            "clip-tiny",
            [
                f"data.sources.train.path={manifest}",
                f"train.steps={args.steps}",
                "train.log_every=10",
                f"data.batch_size={args.batch_size}",
                "train.checkpoint_every=1000000",
            ],
            registry,
        )
        session = runner_module.setup_session(spec, Path(tmp) / "probe", registry, False)
        batches = decoded_batches(session, args.steps)
        bare_loop(session, batches[:5])  # warm-up
        bare, run = [], []
        for repeat in range(args.repeats):
            bare.append(bare_loop(session, batches))
            run.append(runner_loop(spec, registry, Path(tmp) / f"run{repeat}", batches))
    b, r = statistics.median(bare), statistics.median(run)
    print(
        f"steps={args.steps} batch={args.batch_size} repeats={args.repeats} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"bare loop   {b * 1000:8.2f} ms/step (median)")
    print(f"runner      {r * 1000:8.2f} ms/step (median)")
    print(f"runner/bare ratio: {r / b:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
