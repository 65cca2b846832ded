"""``modaloom demo``: build digits-av, train a tiny preset, evaluate, write metrics and a report."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modaloom.core.evaluation import Evaluator, format_table, run_evaluators, write_metrics
from modaloom.core.inference import load_run
from modaloom.core.plugins import default_registry
from modaloom.core.runner import METRICS_FILE, train
from modaloom.core.spec import load_spec

DEMO_PRESETS = ("valor-tiny", "omnivl-tiny", "cots-tiny")
RUN_DIR, REPORT_FILE, CURVE_FILE = "run", "report.md", "loss.png"


def plot_loss(metrics_file: Path, output: Path) -> bool:
    """Draw the training loss curve; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line]
    terms = sorted({k for r in records for k in r if k.endswith("_loss") and "/" in k})
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    for term in terms:  # one line per objective (batches of different sources train different ones)
        points = [(r["step"], r[term]) for r in records if term in r]
        axis.plot(*zip(*points, strict=True), label=term)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("training losses")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(output)
    plt.close(figure)
    return True


def example_sections(evaluators: Sequence[Evaluator]) -> list[str]:
    """Markdown tables of the examples evaluators kept (retrieval, captions, answers)."""
    sections = []
    for evaluator in evaluators:
        examples: list[dict[str, Any]] = getattr(evaluator, "examples", [])
        if not examples:
            continue
        config = getattr(evaluator, "config", None)
        title = getattr(config, "name", None) or getattr(config, "type", "examples")
        columns = list(examples[0])
        rows = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
        rows += [
            f"| {' | '.join(str(e[c]).replace('|', '/') for c in columns)} |" for e in examples
        ]
        sections.append(f"### {title} examples\n\n" + "\n".join(rows))
    return sections


def write_report(
    output: Path,
    preset: str,
    metrics: dict[str, float],
    evaluators: Sequence[Evaluator],
    has_curve: bool,
) -> Path:
    """OUTPUT/report.md: the loss curve, the metrics table and examples."""
    lines = [
        f"# modaloom demo: `{preset}` on digits-av",
        "",
        f"Trained for {metrics['train.seconds']:.0f} s; metrics on the test split "
        "(digit scans never seen in training).",
        "",
    ]
    if has_curve:
        lines += [f"![training loss]({CURVE_FILE})", ""]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4f} |" for key, value in sorted(metrics.items())]
    lines += ["", *[section + "\n" for section in example_sections(evaluators)]]
    path = output / REPORT_FILE
    path.write_text("\n".join(lines))
    return path


def run_demo(
    preset: str | Mapping[str, Any] = "valor-tiny",
    output: str | Path = "demo-output",
    overrides: Sequence[str] = (),
    show_progress: bool = True,
) -> dict[str, float]:
    """Train ``preset`` on digits-av (building it on first use), evaluate, and report.

    A demo killed midway continues from its last checkpoint when run again with the same output.
    """
    registry = default_registry()
    spec = load_spec(preset, overrides, registry)
    output = Path(output)
    started = time.perf_counter()
    resume = (output / RUN_DIR).is_dir()  # a demo that was stopped continues
    train(spec, output / RUN_DIR, registry=registry, resume=resume, show_progress=show_progress)
    seconds = time.perf_counter() - started
    run = load_run(output / RUN_DIR, spec=spec, registry=registry)
    evaluators: list[Evaluator] = []
    metrics = run_evaluators(
        spec,
        run.model,
        run.processors,
        run.sources,
        registry,
        run.device,
        instances=evaluators,
        progress=show_progress,
    )
    metrics["train.seconds"] = round(seconds, 1)
    write_metrics(output / "metrics.json", metrics)
    has_curve = plot_loss(output / RUN_DIR / METRICS_FILE, output / CURVE_FILE)
    name = preset if isinstance(preset, str) else "a custom spec"
    write_report(output, name, metrics, evaluators, has_curve)
    print(format_table(metrics))
    print(f"wrote {output / 'metrics.json'} and {output / REPORT_FILE}")
    return metrics
