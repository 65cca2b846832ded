"""The runner: a falling loss, exact resume after SIGKILL, atomic checkpoints, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modaloom.core.checkpoint import latest_checkpoint
from modaloom.core.errors import CheckpointError, SpecError
from modaloom.core.optim import lr_factor, parameter_groups
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec
from modaloom.core.spec_models import SchedulerSpec


def shapes_spec(registry: Registry, manifest: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_spec("clip-tiny", [f"data.sources.train.path={manifest}", *extra], registry)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_itc_trains_50_steps_with_a_falling_loss(registry, shapes_manifest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = train(
        shapes_spec(registry, shapes_manifest), tmp_path, registry=registry, show_progress=False
    )
    metrics = read_metrics(tmp_path)
    assert result.step == 50 and [m["step"] for m in metrics] == list(range(5, 51, 5))
    first, last = metrics[0]["loss"], sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < 0.75 * first, (first, last)
    assert (tmp_path / "checkpoints" / "step-00000050" / "model.safetensors").is_file()
    assert (tmp_path / "artifacts" / "tokenizer" / "tokenizer.json").is_file()


def run_cli(args: list[str], **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "modaloom", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        **kwargs,
    )


def test_sigkill_then_resume_matches_uninterrupted_run(registry, shapes_manifest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    overrides = [
        f"data.sources.train.path={shapes_manifest}",
        "train.steps=60",
        "train.checkpoint_every=10",
        "data.batch_size=24",
    ]
    killed = tmp_path / "killed"
    args = [
        "train",
        "clip-tiny",
        *[a for o in overrides for a in ("--set", o)],
        "--output",
        str(killed),
        "--no-progress",
    ]
    reference = tmp_path / "reference"
    # both runs in fresh processes: the thread count of this test process may differ
    reference_run = run_cli([*args[:-3], "--output", str(reference), "--no-progress"])
    assert reference_run.wait(timeout=300) == 0, reference_run.stdout.read()  # type: ignore[union-attr]
    process = run_cli(args)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-00000010").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()  # type: ignore[union-attr]
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    found = latest_checkpoint(killed / "checkpoints")
    assert found is not None and int(found.name.split("-")[1]) < 60, "killed too late"
    resumed = run_cli([*args, "--resume"])
    output = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, output
    final_ref = load_file(reference / "checkpoints" / "step-00000060" / "model.safetensors")
    final_res = load_file(killed / "checkpoints" / "step-00000060" / "model.safetensors")
    assert final_ref.keys() == final_res.keys()
    for name in final_ref:
        assert torch.equal(final_ref[name], final_res[name]), name
    steps = [m["step"] for m in read_metrics(killed)]
    assert steps == sorted(set(steps)) and steps[-1] == 60


def test_resume_ignores_half_written_checkpoints(registry, shapes_manifest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = shapes_spec(registry, shapes_manifest, "train.steps=4", "train.checkpoint_every=2")
    train(spec, tmp_path, registry=registry, show_progress=False)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000006").mkdir()  # killed while staging
    (root / ".tmp-step-00000006" / "model.safetensors").write_bytes(b"partial")
    (root / "step-00000008").mkdir()  # a directory without its files is not complete
    assert latest_checkpoint(root) == root / "step-00000004"
    result = train(
        shapes_spec(registry, shapes_manifest, "train.steps=6", "train.checkpoint_every=2"),
        tmp_path,
        registry=registry,
        resume=True,
        show_progress=False,
    )
    assert result.step == 6
    assert [m["step"] for m in read_metrics(tmp_path)][-1] == 6


def test_checkpoint_from_another_spec_lists_mismatches(registry, shapes_manifest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    train(
        shapes_spec(registry, shapes_manifest, "train.steps=2"),
        tmp_path,
        registry=registry,
        show_progress=False,
    )
    other = shapes_spec(
        registry, shapes_manifest, "train.steps=4", "model.objectives.0.embed_dim=32"
    )
    with pytest.raises(CheckpointError) as info:
        train(other, tmp_path, registry=registry, resume=True, show_progress=False)
    message = str(info.value)
    assert "does not match this model (was it made by another spec?)" in message
    assert "objectives.0.proj_a.weight" in message


def test_unwritable_output_is_one_clear_error(registry, shapes_manifest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match=r"^cannot write to output directory .*/file/run: "):
        train(
            shapes_spec(registry, shapes_manifest, "train.steps=2"),
            blocker / "run",
            registry=registry,
            show_progress=False,
        )


def test_keep_last_prunes_old_checkpoints(registry, shapes_manifest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = shapes_spec(
        registry, shapes_manifest, "train.steps=6", "train.checkpoint_every=2", "train.keep_last=2"
    )
    train(spec, tmp_path, registry=registry, show_progress=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000006"]


def test_weight_decay_only_on_matrices() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = parameter_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]  # type: ignore[union-attr]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0  # type: ignore[arg-type]


def test_schedule_shapes() -> None:
    cosine = SchedulerSpec(type="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 110, cosine) == pytest.approx(0.1)
    assert lr_factor(9, 110, cosine) == pytest.approx(1.0)
    assert lr_factor(60, 110, cosine) == pytest.approx(0.55)
    assert lr_factor(110, 110, cosine) == pytest.approx(0.1)
    linear = SchedulerSpec(type="linear", warmup_steps=0)
    assert lr_factor(25, 100, linear) == pytest.approx(0.75)


def test_stage_actions_are_checked_and_run(registry, shapes_manifest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = [f"data.sources.train.path={shapes_manifest}", "train.steps=null"]
    bad = load_spec(
        "clip-tiny", [*base, "train.stages=[{name: a, steps: 1, actions: [vision.fly]}]"], registry
    )
    with pytest.raises(SpecError) as info:
        train(bad, tmp_path / "bad", registry=registry, show_progress=False)
    assert info.value.problems == [
        ("train.stages.0.actions.0", "unknown action 'vision.fly'; available: (none)")
    ]
    video = load_spec(
        "clip-tiny",
        [
            *base,
            "model.components.vision.type=timesformer",
            "train.checkpoint_every=1",
            "train.optimizer.lr=0.01",
            "train.stages=[{name: a, steps: 1}, {name: b, steps: 1, actions: [vision.inflate]}]",
        ],
        registry,
    )
    result = train(video, tmp_path / "ok", registry=registry, show_progress=False)
    root = tmp_path / "ok" / "checkpoints"
    after_a = load_file(root / "step-00000001" / "model.safetensors")
    final = load_file(root / "step-00000002" / "model.safetensors")
    prefix = "components.vision.model."
    spatial = prefix + "vit.layers.0.attention.q_proj.weight"
    temporal = prefix + "temporal.0.attention.q_proj.weight"
    assert result.step == 2
    assert not torch.equal(after_a[temporal], after_a[spatial])  # stage a trained spatial only
    assert torch.equal(final[temporal], after_a[spatial])  # inflated from the trained weights
    assert torch.count_nonzero(final[prefix + "temporal.0.temporal_fc.weight"]) == 0


def test_logged_terms_are_the_values_the_step_used(registry, shapes_manifest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The temperature term is a view of its parameter; the log must show the value used in the
    step, not the one the optimizer step then wrote into the parameter."""
    spec = shapes_spec(
        registry, shapes_manifest, "train.steps=2", "train.log_every=1", "train.checkpoint_every=1"
    )
    train(spec, tmp_path, registry=registry, show_progress=False)
    logged = [m["itc/temperature"] for m in read_metrics(tmp_path)]
    weights = load_file(tmp_path / "checkpoints" / "step-00000001" / "model.safetensors")
    (name,) = [key for key in weights if key.endswith("temperature.value")]
    after_first_step = float(weights[name])
    assert logged[0] == float(torch.tensor(0.07)) != after_first_step
    assert logged[1] == after_first_step
