"""Experiment trackers (``train.log_with``): Accelerate's, or a plugin's, fed from metrics.jsonl.

A name in ``train.log_with`` is a tracker a plugin registered (``registry.add_tracker``, built
into an Accelerate `GeneralTracker` instance), else one of Accelerate's (``tensorboard``,
``wandb``, ``mlflow``, ...; ``all`` picks every installed one). The run's Accelerator gets them
with a logging directory inside the run (``OUTPUT/trackers``); `start` initialises them on the
main process with the resolved spec, flattened to ``section.key: scalar`` pairs, as
hyperparameters; `log_record` sends every number of a metrics.jsonl line at its step; `finish`
closes them. An unknown name or a tracker whose package is missing is a `SpecError`, raised by
``modaloom validate`` and before a run touches its directory.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from accelerate.utils import LoggerType, ProjectConfiguration

from modaloom.core.errors import SpecError
from modaloom.core.registry import Registry
from modaloom.core.spec import spec_to_tree
from modaloom.core.spec_models import ExperimentSpec, TrainSpec

TRACKERS_DIR = "trackers"
"""Where local trackers write (TensorBoard event files: ``OUTPUT/trackers/modaloom``)."""
PROJECT_NAME = "modaloom"
"""The project name trackers are initialised with (``wandb``'s project, TensorBoard's run)."""
PACKAGES: dict[str, str] = {
    "tensorboard": "modaloom[track]",
    "wandb": "wandb",
    "trackio": "trackio",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "mlflow": "mlflow",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
}
"""What ``pip install`` needs for each of Accelerate's trackers."""

Scalar = bool | int | float | str


def accelerate_trackers() -> list[str]:
    """Names Accelerate accepts in ``log_with`` (its own and `register_tracker_class`'s)."""
    return sorted({*LoggerType.list(), *LOGGER_TYPE_TO_CLASS})


def tracker_problem(name: str, registry: Registry) -> str | None:
    """Why ``name`` cannot be used in ``train.log_with`` (``None``: it can)."""
    if name in registry.names("tracker"):
        return None
    known = accelerate_trackers()
    if name not in known:
        names = sorted({*known, *registry.names("tracker")})
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown tracker {name!r}.{hint} Available: {', '.join(names)}."
    installed = {str(tracker) for tracker in get_available_trackers()}
    if name in PACKAGES and name not in installed:
        package = PACKAGES[name]
        return f"tracker {name!r} needs a package that is not installed; pip install '{package}'"
    return None


def check_trackers(train: TrainSpec, registry: Registry) -> None:
    """Refuse unknown trackers and trackers whose package is missing.

    Raises:
        SpecError: one problem per bad entry, at ``train.log_with.<i>``, with the fix.
    """
    problems = [
        (f"train.log_with.{index}", problem)
        for index, name in enumerate(train.log_with)
        if (problem := tracker_problem(name, registry)) is not None
    ]
    if problems:
        raise SpecError(problems)


def accelerator_kwargs(
    spec: ExperimentSpec, registry: Registry, output_dir: Path
) -> dict[str, Any]:
    """What `Accelerator` needs to track ``spec``'s run in ``output_dir`` (``{}``: no trackers).

    Plugin trackers are built here, with their ``train.tracker_config`` entry; Accelerate's are
    built by `start` from their names.

    Raises:
        SpecError: see `check_trackers`.
    """
    train = spec.train
    if not train.log_with:
        return {}
    check_trackers(train, registry)
    logging_dir = output_dir / TRACKERS_DIR
    plugins = set(registry.names("tracker"))
    log_with = [
        registry.tracker_factory(name)(logging_dir, train.tracker_config.get(name, {}))
        if name in plugins
        else name
        for name in train.log_with
    ]
    config = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(logging_dir))
    return {"log_with": log_with, "project_config": config}


def start(accelerator: Accelerator, spec: ExperimentSpec, step: int) -> None:
    """Initialise the trackers on the main process with the spec as hyperparameters.

    A resumed run (``step`` > 0) hides TensorBoard events after ``step`` from the killed run
    (``purge_step``), so the redone steps are not shown twice.
    """
    if not spec.train.log_with:
        return
    init_kwargs = {name: dict(config) for name, config in spec.train.tracker_config.items()}
    if step > 0:
        init_kwargs.setdefault("tensorboard", {}).setdefault("purge_step", step + 1)
    accelerator.init_trackers(PROJECT_NAME, config=hyperparameters(spec), init_kwargs=init_kwargs)


def hyperparameters(spec: ExperimentSpec) -> dict[str, Scalar]:
    """The resolved spec as ``dotted.path: scalar`` pairs (what trackers accept)."""
    return flatten(spec_to_tree(spec))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested mappings and lists to dotted paths; ``None`` becomes ``"null"``, an empty
    collection or a list of scalars its JSON text."""
    flat: dict[str, Scalar] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, list) and any(isinstance(v, Mapping | list) for v in value):
            value = {str(index): item for index, item in enumerate(value)}
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        elif isinstance(value, Mapping | list):
            flat[path] = json.dumps(value)
        elif value is None:
            flat[path] = "null"
        else:
            flat[path] = value
    return flat


def log_record(accelerator: Accelerator, record: Mapping[str, Any]) -> None:
    """Send the numbers of one metrics.jsonl line to the trackers at its ``step`` (main
    process; the ``stage`` label stays in metrics.jsonl)."""
    if not accelerator.trackers:
        return
    values = {
        name: value
        for name, value in record.items()
        if name != "step" and isinstance(value, int | float) and not isinstance(value, bool)
    }
    accelerator.log(values, step=int(record["step"]))


def finish(accelerator: Accelerator) -> None:
    """Close every tracker (flushes TensorBoard's events); the process group stays up."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
