"""Experiment trackers: TensorBoard events read back, a plugin's tracker, refusals, grad_norm."""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate.tracking import GeneralTracker
from safetensors.torch import load_file

from modaloom.core import tracking
from modaloom.core.cli import main
from modaloom.core.errors import SpecError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.plugins import load_plugins
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec


def clip_spec(registry: Registry, manifest: Path, *extra: str):  # type: ignore[no-untyped-def]
    base = [f"data.sources.train.path={manifest}", "train.steps=4", "train.log_every=2"]
    return load_spec("clip-tiny", [*base, *extra], registry)


def read_metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_events_hold_every_metric_at_its_step(
    registry: Registry, shapes_manifest: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = clip_spec(registry, shapes_manifest, "train.log_with=[tensorboard]")
    train(spec, tmp_path, registry=registry, show_progress=False)
    events = EventAccumulator(str(tmp_path / "trackers" / "modaloom"))
    events.Reload()
    metrics = read_metrics(tmp_path)
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "itc/itc_loss", "skipped_samples"} <= tags
    for tag in ("loss", "lr", "grad_norm", "itc/itc_loss"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [2, 4]
        expected = [m[tag] for m in metrics]
        assert [s.value for s in scalars] == pytest.approx(expected, rel=1e-6), tag


class Recorder(GeneralTracker):
    """A tracker that records what Accelerate asks of it."""

    name = "recorder"
    requires_logging_directory = True
    calls: list[tuple[str, Any]] = []

    def __init__(self, logging_dir: Path, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.calls.append(("init", (logging_dir, dict(config))))

    @property
    def tracker(self) -> Recorder:
        return self

    def start(self) -> None:
        self.calls.append(("start", None))

    def store_init_configuration(self, values: dict) -> None:
        self.calls.append(("config", values))

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self.calls.append(("log", (step, values)))

    def finish(self) -> None:
        self.calls.append(("finish", None))


def recorder_plugin() -> types.ModuleType:
    module = types.ModuleType("recorder_plugin")

    @hookimpl
    def modaloom_register_trackers(registry: Registry) -> None:
        registry.add_tracker("recorder", Recorder, description="records calls")

    module.modaloom_register_trackers = modaloom_register_trackers  # type: ignore[attr-defined]
    return module


def test_a_plugin_tracker_gets_the_spec_and_every_logged_line(
    shapes_manifest: Path, tmp_path: Path
) -> None:
    registry = load_plugins(entry_points=False, extra=[recorder_plugin()])
    assert registry.get("tracker", "recorder").plugin == "recorder_plugin"
    Recorder.calls.clear()
    spec = clip_spec(
        registry,
        shapes_manifest,
        "train.log_with=[recorder]",
        "train.tracker_config={recorder: {tag: x}}",
    )
    train(spec, tmp_path, registry=registry, show_progress=False)
    kinds = [kind for kind, _ in Recorder.calls]
    assert kinds == ["init", "start", "config", "log", "log", "finish"]
    assert Recorder.calls[0][1] == (tmp_path / "trackers", {"tag": "x"})
    config = Recorder.calls[2][1]
    assert config["train.steps"] == 4 and config["model.components.vision.type"] == "vit"
    assert config["model.objectives.0.type"] == "itc" and config["train.init_from"] == "null"
    assert all(isinstance(v, bool | int | float | str) for v in config.values())
    logged = [value for kind, value in Recorder.calls if kind == "log"]
    for (step, values), line in zip(logged, read_metrics(tmp_path), strict=True):
        assert step == line["step"]
        assert values == {k: v for k, v in line.items() if k not in ("step", "stage")}


def test_unknown_tracker_is_one_spec_error_also_in_validate(
    registry: Registry, shapes_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = clip_spec(registry, shapes_manifest, "train.log_with=[tensorbord]")
    with pytest.raises(SpecError) as info:
        train(spec, tmp_path / "run", registry=registry, show_progress=False)
    names = ", ".join(tracking.accelerate_trackers())
    assert str(info.value) == (
        "spec is invalid (1 problem):\n"
        f"  train.log_with.0: unknown tracker 'tensorbord'. Did you mean 'tensorboard'? "
        f"Available: {names}."
    )
    assert not (tmp_path / "run").exists()
    args = ["--set", f"data.sources.train.path={shapes_manifest}"]
    assert main(["validate", "clip-tiny", *args, "--set", "train.log_with=[tensorbord]"]) == 2
    assert "train.log_with.0: unknown tracker 'tensorbord'." in capsys.readouterr().err


def test_a_tracker_without_its_package_says_what_to_install(
    registry: Registry, shapes_manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracking, "get_available_trackers", lambda: [])
    spec = clip_spec(registry, shapes_manifest, "train.log_with=[tensorboard, wandb]")
    with pytest.raises(SpecError) as info:
        tracking.check_trackers(spec.train, registry)
    assert info.value.problems == [
        (
            "train.log_with.0",
            "tracker 'tensorboard' needs a package that is not installed; "
            "pip install 'modaloom[track]'",
        ),
        (
            "train.log_with.1",
            "tracker 'wandb' needs a package that is not installed; pip install 'wandb'",
        ),
    ]


def test_tracker_config_for_a_tracker_not_in_log_with_is_refused(
    registry: Registry, shapes_manifest: Path
) -> None:
    with pytest.raises(SpecError) as info:
        clip_spec(registry, shapes_manifest, "train.tracker_config={wandb: {entity: me}}")
    assert info.value.problems == [
        ("train.tracker_config.wandb", "is not in train.log_with; add it there or remove it")
    ]


def test_flatten_gives_scalars_at_dotted_paths() -> None:
    tree = {"a": {"b": 1, "c": None, "d": [1, 2], "e": [{"f": "x"}], "g": {}}, "h": True}
    assert tracking.flatten(tree) == {
        "a.b": 1,
        "a.c": "null",
        "a.d": "[1, 2]",
        "a.e.0.f": "x",
        "a.g": "{}",
        "h": True,
    }


def test_grad_norm_is_measured_before_clipping_and_measuring_changes_nothing(
    registry: Registry, shapes_manifest: Path, tmp_path: Path
) -> None:
    runs = {"tiny": "1.0e-6", "never": "1.0e6", "off": "null"}
    for name, limit in runs.items():
        spec = clip_spec(registry, shapes_manifest, f"train.max_grad_norm={limit}")
        train(spec, tmp_path / name, registry=registry, show_progress=False)
    norms = {name: [m["grad_norm"] for m in read_metrics(tmp_path / name)] for name in runs}
    assert all(norm > 1e-3 for norm in norms["tiny"])  # the norm before clipping to 1e-6
    assert norms["off"] == norms["never"]
    final = "checkpoints/step-00000004/model.safetensors"
    never, off = load_file(tmp_path / "never" / final), load_file(tmp_path / "off" / final)
    assert all(torch.equal(never[name], off[name]) for name in never)


def test_progress_bar_shows_lr_beside_loss(
    registry: Registry, shapes_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train(clip_spec(registry, shapes_manifest), tmp_path, registry=registry, show_progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "loss=" in last and "lr=" in last, last


def test_a_resumed_run_hides_the_redone_steps_of_the_killed_one(
    registry: Registry, shapes_manifest: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    extra = ("train.log_with=[tensorboard]", "train.log_every=1", "train.checkpoint_every=2")
    spec = clip_spec(registry, shapes_manifest, *extra)
    train(spec, tmp_path, registry=registry, show_progress=False)
    killed = tmp_path / "checkpoints" / "step-00000004"
    for path in killed.iterdir():
        path.unlink()
    killed.rmdir()  # as if killed after logging steps 3 and 4
    train(spec, tmp_path, registry=registry, resume=True, show_progress=False)
    events = EventAccumulator(str(tmp_path / "trackers" / "modaloom"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [s.step for s in losses] == [1, 2, 3, 4]
    expected = [m["loss"] for m in read_metrics(tmp_path)]
    assert [s.value for s in losses] == pytest.approx(expected, rel=1e-6)
