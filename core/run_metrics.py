"""What a `TrainingSession` records: a line of metrics.jsonl per logged step, evaluations during
training (``train.eval_every``) and the last step's metrics.json."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from modaloom.core import tracking
from modaloom.core.evaluation import run_evaluators, write_metrics

if TYPE_CHECKING:
    from modaloom.core.runner import TrainingSession

FINAL_METRICS_FILE = "metrics.json"
"""Evaluator metrics of the last step (``train.eval_every``), in the run directory."""


def append_metrics(session: TrainingSession, record: dict[str, Any]) -> None:
    """Append one JSON line to metrics.jsonl and send its numbers to the trackers (main
    process only)."""
    if session.accelerator.is_main_process:
        with session.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        tracking.log_record(session.accelerator, record)


def evaluate(session: TrainingSession, stage: str) -> dict[str, float]:
    """Run the spec's evaluators on every rank (each takes a share of the batches) and
    append their metrics to metrics.jsonl as ``eval/<metric>`` (main process)."""
    assert session.registry is not None
    model = session.unwrapped
    with session.accelerator.autocast():
        metrics = run_evaluators(
            session.spec,
            model,
            session.processors,
            {**session.sources, **session.eval_sources},
            session.registry,
            session.accelerator.device,
        )
    model.train()
    record: dict[str, Any] = {"step": session.step, "stage": stage}
    record.update({f"eval/{name}": value for name, value in sorted(metrics.items())})
    append_metrics(session, record)
    session.last_evaluation = (session.step, metrics)
    return metrics


def write_final_metrics(session: TrainingSession, stage: str) -> None:
    """Evaluate the last step (unless just done) and write metrics.json (main process)."""
    step, metrics = session.last_evaluation
    if step != session.step:
        metrics = evaluate(session, stage)
    if session.accelerator.is_main_process:
        write_metrics(session.output_dir / FINAL_METRICS_FILE, metrics)


def log_step(
    session: TrainingSession,
    stage: str,
    loss: torch.Tensor,
    terms: dict[str, torch.Tensor],
    started: float,
    bar: tqdm,
) -> float:
    """Append one line to metrics.jsonl (main process) and update the bar; returns the loss
    (mean over ranks)."""
    acc = session.accelerator
    values = torch.stack([loss.to(acc.device), *[t.float().to(acc.device) for t in terms.values()]])
    values = acc.reduce(values, reduction="mean")
    skipped = acc.reduce(torch.tensor(float(session.skipped), device=acc.device), reduction="sum")
    record: dict[str, Any] = {"step": session.step, "stage": stage, "loss": float(values[0])}
    record.update({name: float(v) for name, v in zip(terms, values[1:], strict=True)})
    record.update(
        {
            "lr": session.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm(session.grad_norm),
            "skipped_samples": int(skipped),
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
    )
    append_metrics(session, record)
    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.3g}")
    return float(record["loss"])


def grad_norm(norm: torch.Tensor | None) -> float | None:
    """The last step's gradient norm as a number (every rank: gathers a sharded norm)."""
    if norm is None:
        return None
    full = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    return float(full)
