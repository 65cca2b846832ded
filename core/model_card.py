"""The model card (``README.md``) ``modaloom export`` writes: how to load the export, the run's
metrics, its data sources, the checkpoints it started from and its spec."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from modaloom.core.checkpoint import read_meta
from modaloom.core.portable import SOURCES_FILE
from modaloom.core.run_dir import ARTIFACTS_DIR, METRICS_FILE, SPEC_FILE

__all__ = ["CARD_FILE", "model_card", "run_metrics"]

CARD_FILE = "README.md"
METRICS_JSON = "metrics.json"
"""Evaluation results: the run's (``train.eval_every``) and a checkpoint's (``modaloom eval``)."""
BOOK = ("step", "elapsed_s", "skipped_samples")
"""Bookkeeping fields of a metrics.jsonl line, left out of the card's table."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_metrics(run_dir: Path, checkpoint: Path) -> dict[str, float]:
    """The metrics recorded for the run: the last training line of metrics.jsonl (loss terms,
    learning rate), then the run's metrics.json, then the checkpoint's (``modaloom eval``),
    later ones winning."""
    found: dict[str, float] = {}
    log = run_dir / METRICS_FILE
    lines = log.read_text().splitlines() if log.is_file() else []
    for line in reversed(lines):
        record = _parse(line)
        if record is not None and "loss" in record:
            found.update(_numbers(record, skip=BOOK))
            break
    for path in (run_dir / METRICS_JSON, checkpoint / METRICS_JSON):
        values = _read_json(path)
        if isinstance(values, dict):
            found.update(_numbers(values))
    return found


def _numbers(record: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    return {k: v for k, v in record.items() if isinstance(v, int | float) and k not in skip}


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _sources(tree: Mapping[str, Any]) -> list[str]:
    """One line per data source: ``- name (section): type, key=value, ...``."""
    data = tree.get("data") or {}
    lines = []
    for section in ("sources", "eval_sources"):
        for name, source in (data.get(section) or {}).items():
            if not isinstance(source, dict):
                continue
            fields = [f"{k}={v}" for k, v in source.items() if _is_location(k) and v]
            described = ", ".join([str(source.get("type")), *fields])
            lines.append(f"- `{name}` ({section}): {described}")
    return lines or ["- (none recorded)"]


def _is_location(key: str) -> bool:
    """Whether a source field says where its data is (``path``, ``urls``, ``root``, ...)."""
    return any(word in key for word in ("path", "url", "root", "name", "split"))


def _started_from(run_dir: Path) -> list[str]:
    sources = _read_json(run_dir / ARTIFACTS_DIR / SOURCES_FILE) or {}
    lines = [f"- `{name}`: `{value}`" for name, value in (sources.get("pretrained") or {}).items()]
    if sources.get("tokenizer"):
        lines.append(f"- tokenizer: `{sources['tokenizer']}`")
    return lines or ["- random initialisation (no `pretrained:` component)"]


def _usage(component: str | None, export_class: str | None) -> list[str]:
    if component is None:
        return ["```python", "import modaloom", 'pipe = modaloom.load("PATH")', "```"]
    return [
        "```python",
        f"from transformers import {export_class}",
        f'model = {export_class}.from_pretrained("PATH")',
        "```",
    ]


def model_card(
    run_dir: Path,
    checkpoint: Path,
    component: str | None = None,
    export_class: str | None = None,
) -> str:
    """The card of an export of ``checkpoint`` (of the run in ``run_dir``).

    Args:
        run_dir: the run directory (spec.yaml, metrics, artifacts).
        checkpoint: the checkpoint exported.
        component: the component exported, ``None`` for the whole model.
        export_class: the `transformers` class that loads the component.
    """
    spec_text = (run_dir / SPEC_FILE).read_text() if (run_dir / SPEC_FILE).is_file() else ""
    tree = yaml.safe_load(spec_text) if spec_text else {}
    step = read_meta(checkpoint).get("step")
    what = f"component `{component}` ({export_class})" if component else "the whole model"
    library = "transformers" if component else "modaloom"
    metrics = run_metrics(run_dir, checkpoint)
    table = ["| metric | value |", "|---|---|"] + [
        f"| `{name}` | {value:.4g} |" for name, value in sorted(metrics.items())
    ]
    lines = [
        "---",
        f"library_name: {library}",
        "tags: [modaloom]",
        "---",
        "",
        f"# {run_dir.name}: {what}",
        "",
        f"Exported by `modaloom export` from `{checkpoint}` (step {step}).",
        "",
        "## Use",
        "",
        *_usage(component, export_class),
        "",
        "## Metrics",
        "",
        *(table if metrics else ["(none recorded)"]),
        "",
        "## Data",
        "",
        *_sources(tree if isinstance(tree, dict) else {}),
        "",
        "## Started from",
        "",
        *_started_from(run_dir),
        "",
        "## Spec",
        "",
        "```yaml",
        spec_text.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)
