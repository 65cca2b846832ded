"""The papers' ablation ladders on digits-av (issue 16 §5): same steps, same seeds per rung.

- COTS (``cots-tiny``): instance only -> + task KL -> + AMF -> + MVLM (t2i R@1, zero-shot).
- VALOR (``valor-tiny``): MGA and MGC groups T-V, T-A, T-AV, all three (t2av R@1, CIDEr).
- OmniVL (``omnivl-tiny``): image-only -> image then joint (stage 2) -> joint from the start
  (t2v R@1).

Every rung trains its preset with ``--steps`` optimizer steps in all (a staged preset keeps the
ratio of its stages) for each of ``--seeds`` seeds (``train.seed``), evaluates the preset's
evaluators on the test split, and the table gives mean and spread (sample standard deviation)
over the seeds. A metric a rung cannot compute is ``n/a``, with the reason printed: a model
trained on T-V (or T-A) only has no MGA head and no condition adapter for the other modality,
so it cannot score t2av retrieval (that is what the rung removes); it captions from the modality
it was trained on (T-V: vision alone, whose captions cannot name the heard digit).

    python benchmarks/ablations.py                                  # 3 seeds, the presets' steps
    python benchmarks/ablations.py --steps 2 --seeds 1 --ladders cots --output /tmp/abl   # smoke

Nothing is tuned per rung: the presets' values, with only the ladder's difference applied.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modaloom.core.evaluation import run_evaluators
from modaloom.core.inference import load_run
from modaloom.core.plugins import default_registry
from modaloom.core.runner import train
from modaloom.core.spec import resolve_tree, validate_tree

Tree = dict[str, Any]
METRICS_FILE = "ablation-metrics.json"
"""Each run's metrics, beside its run directory's checkpoints (a rerun skips finished runs)."""
Rung = tuple[str, Callable[[Tree], None]]
GROUPS: dict[str, list[Any]] = {
    "T-V": [["text", "vision"]],
    "T-A": [["text", "audio"]],
    "T-AV": [["text", ["vision", "audio"]]],
    "all three": [["text", "vision"], ["text", "audio"], ["text", ["vision", "audio"]]],
}


def objective(tree: Tree, kind: str) -> dict[str, Any]:
    """The preset's objective of type ``kind``."""
    return next(o for o in tree["model"]["objectives"] if o["type"] == kind)


def cots_rung(task: bool, amf: bool, mvlm: bool) -> Callable[[Tree], None]:
    def apply(tree: Tree) -> None:
        contrastive = objective(tree, "cots_contrastive")
        contrastive.update(task_alignment=task, amf=amf)
        if not mvlm:
            tree["model"]["objectives"] = [
                o for o in tree["model"]["objectives"] if o["type"] != "mvlm"
            ]

    return apply


def valor_rung(groups: list[Any]) -> Callable[[Tree], None]:
    def apply(tree: Tree) -> None:
        for kind in ("mga", "mgc"):
            objective(tree, kind)["groups"] = copy.deepcopy(groups)
        if len(groups) == 1:  # caption from what the rung trained on (T-V: vision alone)
            for evaluator in tree["eval"]:
                if evaluator["type"] == "captioning":
                    evaluator["group"] = copy.deepcopy(groups[0])

    return apply


def omnivl_rung(schedule: str) -> Callable[[Tree], None]:
    def apply(tree: Tree) -> None:
        image, joint = tree["train"]["stages"]
        total = image["steps"] + joint["steps"]
        if schedule == "image-only":
            tree["train"]["stages"] = [{**image, "steps": total}]
        elif schedule == "joint from the start":
            tree["train"]["stages"] = [{**joint, "steps": total, "actions": []}]

    return apply


LADDERS: dict[str, tuple[str, list[Rung], list[str]]] = {
    "cots": (
        "cots-tiny",
        [
            ("instance only", cots_rung(False, False, False)),
            ("+ task KL", cots_rung(True, False, False)),
            ("+ AMF", cots_rung(True, True, False)),
            ("+ MVLM", cots_rung(True, True, True)),
        ],
        ["t2i.r1", "zeroshot.accuracy"],
    ),
    "valor": (
        "valor-tiny",
        [(name, valor_rung(groups)) for name, groups in GROUPS.items()],
        ["t2av.r1", "t2v.r1", "t2a.r1", "cider"],
    ),
    "omnivl": (
        "omnivl-tiny",
        [
            (name, omnivl_rung(name))
            for name in ("image-only", "image then joint", "joint from the start")
        ],
        ["t2v.r1"],
    ),
}


def scale_steps(tree: Tree, steps: int | None) -> None:
    """``steps`` optimizer steps in all, stages keeping their ratio (at least 1 each)."""
    if steps is None:
        return
    train_section = tree["train"]
    stages = train_section.get("stages")
    if not stages:
        train_section["steps"] = steps
        return
    total = sum(stage["steps"] for stage in stages)
    for stage in stages:
        stage["steps"] = max(1, round(steps * stage["steps"] / total))


def pick(metrics: dict[str, float], suffix: str) -> float:
    """The metric whose name ends with ``suffix`` (``nan`` when there is none)."""
    found = [value for name, value in metrics.items() if name.endswith(suffix)]
    return float(found[0]) if found else math.nan


def run_rung(
    preset: str, rung: Rung, seed: int, steps: int | None, output: Path
) -> dict[str, float]:
    """Train and evaluate one rung with one seed; its metrics."""
    registry = default_registry()
    tree = resolve_tree(preset, registry)
    rung[1](tree)
    scale_steps(tree, steps)
    tree["train"]["seed"] = seed
    tree["train"]["eval_every"] = None
    spec = validate_tree(tree, registry, source=f"{preset} ({rung[0]})")
    run_dir = output / preset / rung[0].replace(" ", "_").replace("+", "plus") / f"seed{seed}"
    done = run_dir / METRICS_FILE
    if done.is_file():  # a rerun with the same --output continues where it stopped
        return {k: float(v) for k, v in json.loads(done.read_text()).items()}
    train(spec, run_dir, registry=registry, overwrite=run_dir.exists(), show_progress=False)
    run = load_run(run_dir, spec=spec, registry=registry)
    metrics: dict[str, float] = {}
    for evaluator in spec.eval:  # one at a time: a rung without a head skips that metric only
        single = spec.model_copy(update={"eval": [evaluator]})
        try:
            metrics.update(
                run_evaluators(single, run.model, run.processors, run.sources, registry, run.device)
            )
        except Exception as exc:
            reason = " ".join(line.strip() for line in str(exc).splitlines())
            print(f"  {preset} / {rung[0]}: {evaluator.type} not computed ({reason})")
    done.write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return metrics


def summary(values: list[float]) -> str:
    """``mean ± spread`` over seeds; ``n/a`` when not computed."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="steps per run (preset's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per rung (0, 1, ...)")
    parser.add_argument("--ladders", default="cots,valor,omnivl", help="comma-separated")
    parser.add_argument("--output", type=Path, default=Path("ablation-runs"))
    args = parser.parse_args(argv)
    rows = []
    for ladder in args.ladders.split(","):
        preset, rungs, wanted = LADDERS[ladder]
        for rung in rungs:
            runs = [run_rung(preset, rung, s, args.steps, args.output) for s in range(args.seeds)]
            cells = [f"{name}: {summary([pick(m, name) for m in runs])}" for name in wanted]
            rows.append(f"| {ladder} | {rung[0]} | {'; '.join(cells)} |")
            print(rows[-1], flush=True)
    steps = args.steps if args.steps is not None else "the presets'"
    print(f"\n{args.seeds} seed(s), {steps} steps per run (mean ± sample std over seeds)")
    print("| ladder | rung | metrics |\n|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
