"""Runner overhead: seconds per step through the modaloom runner over a bare PyTorch loop.

Both loops train the same `LoomModel` (clip-tiny: ViT + BERT + ITC) on the same pre-decoded
batches, so data decoding is excluded from both; checkpoint writing is excluded from the runner
(it is I/O, not per-step overhead). Repetitions alternate bare/runner and the median is reported.
``--warmup N`` leaves each loop's first N steps out of its time (they still train). The functions
here are shared with `vs_open_clip.py`.

    python benchmarks/runner_overhead.py --steps 60 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from modaloom.core import runner as runner_module
from modaloom.core.data import SampleDecoder
from modaloom.core.optim import make_optimizer, make_scheduler
from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec
from modaloom.core.spec_models import ExperimentSpec
from modaloom.core.stream import StreamPlan, TrainStream

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_shapes


class StepClock:
    """Iterates over ``batches`` and times the steps after the first ``warmup`` ones.

    The clock starts when batch ``warmup`` is requested, that is when the loop has finished its
    warm-up steps; `per_step` divides the time since then by the number of timed steps.
    """

    def __init__(self, batches: Sequence[Any], warmup: int = 0) -> None:
        if not 0 <= warmup < len(batches):
            raise ValueError(f"warmup {warmup} must be below the {len(batches)} batches")
        self.batches, self.warmup, self.start = batches, warmup, math.nan

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self.batches):
            if index == self.warmup:
                self.start = time.perf_counter()
            yield batch

    def per_step(self) -> float:
        """Seconds per timed step, up to now (call it when the loop has returned)."""
        return (time.perf_counter() - self.start) / (len(self.batches) - self.warmup)


def clip_tiny_spec(
    registry: Registry,
    manifest: Path,
    steps: int,
    batch_size: int,
    overrides: Sequence[str] = (),
) -> ExperimentSpec:
    """clip-tiny on ``manifest`` for ``steps`` steps, logging every 10, no checkpoint on the way.

    ``overrides``: more ``--set``-style assignments (e.g. wider encoders).
    """
    settings = [
        f"data.sources.train.path={manifest}",
        f"train.steps={steps}",
        "train.log_every=10",
        f"data.batch_size={batch_size}",
        "train.checkpoint_every=1000000",
        *overrides,
    ]
    return load_spec("clip-tiny", settings, registry)


def decoded_batches(session: runner_module.TrainingSession, steps: int) -> list[dict[str, Any]]:
    """``steps`` training batches of the session's source, decoded once (augmentations on)."""
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


def bare_loop(
    session: runner_module.TrainingSession, batches: list[dict[str, Any]], warmup: int = 0
) -> float:
    """nanoGPT-style loop: forward, backward, clip, step, schedule, zero_grad.

    Returns:
        Seconds per step after the first ``warmup`` steps.
    """
    model = session.unwrapped
    train = session.spec.train
    optimizer = make_optimizer(model, train.optimizer)
    scheduler = make_scheduler(optimizer, len(batches), train.scheduler)
    model.train()
    clock = StepClock(batches, warmup)
    for batch in clock:
        loss = model({k: v for k, v in batch.items() if k != "__skipped__"}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        model.after_optimizer_step()
    return clock.per_step()


def runner_loop(
    spec: ExperimentSpec,
    registry: Registry,
    output: Path,
    batches: list[dict[str, Any]],
    warmup: int = 0,
) -> float:
    """The real `TrainingSession.run` with its loader replaced by the same decoded batches.

    Returns:
        Seconds per step after the first ``warmup`` steps, up to the return of ``run``.
    """
    session = runner_module.setup_session(spec, output, registry, show_progress=False)
    session.save_checkpoint = lambda: None  # type: ignore[method-assign]
    clock = StepClock([dict(b) for b in batches], warmup)
    original = runner_module.make_train_loader
    runner_module.make_train_loader = lambda *a, **k: clock  # type: ignore[assignment]
    try:
        session.run()
        return clock.per_step()
    finally:
        runner_module.make_train_loader = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=0, help="untimed first steps of each loop")
    args = parser.parse_args()
    torch.manual_seed(0)
    registry = load_plugins()
    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_shapes(Path(tmp) / "data", 128)
        spec = clip_tiny_spec(registry, manifest, total, args.batch_size)
        session = runner_module.setup_session(spec, Path(tmp) / "probe", registry, False)
        batches = decoded_batches(session, total)
        bare_loop(session, batches[:5])  # warm-up
        bare, run = [], []
        for repeat in range(args.repeats):
            bare.append(bare_loop(session, batches, args.warmup))
            output = Path(tmp) / f"run{repeat}"
            run.append(runner_loop(spec, registry, output, batches, args.warmup))
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
