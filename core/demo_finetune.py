"""``modaloom demo --finetune``: does pretraining help? The same fine-tuning twice, side by side.

A ``valor-tiny`` pretraining run (trained here by the plain demo, or given with ``--from RUN``)
is fine-tuned with the ``valor-tiny-ft`` preset: text-to-audio-video retrieval on digits-av
captions worded as pretraining never saw. The same spec, data, seed and steps also train from
scratch; ``report.md`` puts both runs' test metrics side by side with their difference.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modaloom.core.demo import RUN_DIR, run_demo
from modaloom.core.errors import ModaloomError
from modaloom.core.evaluation import run_evaluators, write_metrics
from modaloom.core.inference import load_run
from modaloom.core.plugins import default_registry
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec, resolve_tree

__all__ = ["FINETUNE_PRESET", "PRETRAIN_PRESET", "STARTS", "run_finetune_demo"]

PRETRAIN_PRESET, FINETUNE_PRESET = "valor-tiny", "valor-tiny-ft"
STARTS = ("scratch", "pretrained")
"""The two fine-tuning runs, each in ``OUTPUT/<start>``."""
REPORT_FILE, METRICS_FILE = "report.md", "metrics.json"
INIT_OBJECTIVES = ["mga"]
"""Objectives whose heads come over from the pretraining run (the components always do)."""


def finetune_tree(base: Mapping[str, Any], start: str, pretrained_run: Path) -> dict[str, Any]:
    """The fine-tuning spec tree of one start: ``base`` as is (scratch), or with
    ``train.init_from`` naming the pretraining run (pretrained)."""
    tree = copy.deepcopy(dict(base))
    if start == "pretrained":
        init = {"path": str(pretrained_run), "objectives": INIT_OBJECTIVES}
        tree.setdefault("train", {})["init_from"] = init
    return tree


def finetune_once(
    tree: dict[str, Any],
    output: Path,
    registry: Registry,
    show_progress: bool,
    overrides: Sequence[str] = (),
) -> dict[str, float]:
    """Train one start (continuing it if it was stopped) and evaluate it on the test split."""
    spec = load_spec(tree, overrides, registry)
    train(spec, output, registry=registry, resume=output.is_dir(), show_progress=show_progress)
    run = load_run(output, spec=spec, registry=registry)
    metrics = run_evaluators(spec, run.model, run.processors, run.sources, registry, run.device)
    write_metrics(output / METRICS_FILE, metrics)
    return metrics


def write_comparison(
    output: Path, pretrained_run: Path, steps: int, results: dict[str, dict[str, float]]
) -> Path:
    """OUTPUT/report.md: every metric from scratch and from the pretrained run, and the gain."""
    lines = [
        f"# modaloom demo --finetune: `{FINETUNE_PRESET}` from scratch and from a pretraining run",
        "",
        f"Both runs fine-tune for {steps} steps with the same spec, data and seed; the pretrained "
        f"one starts from `{pretrained_run}` (`train.init_from`: every component and the MGA "
        "heads). Metrics on the digits-av test split, captions worded as pretraining never saw.",
        "",
        "| metric | from scratch | from pretrained | gain |",
        "|---|---|---|---|",
    ]
    scratch, pretrained = results["scratch"], results["pretrained"]
    for key in sorted(set(scratch) & set(pretrained)):
        gain = pretrained[key] - scratch[key]
        lines.append(f"| {key} | {scratch[key]:.4f} | {pretrained[key]:.4f} | {gain:+.4f} |")
    path = output / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def run_finetune_demo(
    output: str | Path = "demo-finetune",
    pretrained_run: str | Path | None = None,
    show_progress: bool = True,
    pretrain: str | Mapping[str, Any] = PRETRAIN_PRESET,
    finetune: str | Mapping[str, Any] = FINETUNE_PRESET,
    overrides: Sequence[str] = (),
) -> dict[str, dict[str, float]]:
    """Pretrain (unless ``pretrained_run`` is given), fine-tune from scratch and from it, report.

    Args:
        output: the demo directory (``pretrain/``, ``scratch/``, ``pretrained/``, report.md).
        pretrained_run: a finished pretraining run directory (``--from``); trained when None.
        show_progress: show progress bars.
        pretrain: the pretraining spec (a preset name or a tree; tests pass a small one).
        finetune: the fine-tuning spec.
        overrides: ``--set`` overrides of the fine-tuning spec.

    Returns:
        ``{"scratch": metrics, "pretrained": metrics}``.

    Raises:
        ModaloomError: ``pretrained_run`` does not exist.
    """
    registry, output = default_registry(), Path(output)
    if pretrained_run is None:
        run_demo(pretrain, output / "pretrain", show_progress=show_progress)
        pretrained_run = output / "pretrain" / RUN_DIR
    pretrained_run = Path(pretrained_run)
    if not pretrained_run.is_dir():
        raise ModaloomError(f"--from {pretrained_run}: no such run directory; give a train output")
    base = resolve_tree(finetune, registry)
    results = {
        start: finetune_once(
            finetune_tree(base, start, pretrained_run),
            output / start,
            registry,
            show_progress,
            overrides,
        )
        for start in STARTS
    }
    (output / METRICS_FILE).write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    steps = int(load_spec(base, overrides, registry).train.steps)
    report = write_comparison(output, pretrained_run, steps, results)
    gain = results["pretrained"]["retrieval.t2av.r1"] - results["scratch"]["retrieval.t2av.r1"]
    print(
        f"t2av R@1: scratch {results['scratch']['retrieval.t2av.r1']:.3f}, pretrained "
        f"{results['pretrained']['retrieval.t2av.r1']:.3f} ({gain:+.3f}); wrote {report}"
    )
    return results
