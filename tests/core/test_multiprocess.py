"""Real multi-process training on CPU: ``torchrun`` with two gloo ranks through the CLI.

1. Two ranks with ``data.batch_size=8`` train the same model as one process with
   ``data.batch_size=16``: rank r takes plan micro-batch ``2m + r``, so the two ranks together
   see the single process's 16 samples with the same augmentations, and ITC gathers both ranks'
   embeddings (with gradient) so every rank computes the loss over the same 16 x 16 logits.
   Losses and weights agree to a tolerance, not bitwise: matrix products over 8 rows and over
   16 rows block their sums differently, and DDP averages gradients (g0 + g1) / 2 where a single
   process sums per-sample terms in one pass. Dropout is off in both runs, because each process
   draws its own masks for its own rows.
2. A two-rank run resumed from an intermediate checkpoint reproduces the uninterrupted run
   bitwise. Both runs have the same world size, the same per-rank RNG streams (restored from
   ``rng-rank{r}.pt``; dropout stays on so that restoring them matters), the same data position
   and the same reduction order (with two ranks a gloo sum is a + b, which is commutative), so
   there is no source of rounding difference and an exact comparison is the right one. Resuming
   with another number of processes is refused with one message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from modaloom.core.evaluation import run_evaluators
from modaloom.core.inference import load_run
from modaloom.core.registry import Registry
from modaloom.core.runner import train
from modaloom.core.spec import load_spec

DROPOUT_OFF = [
    f"model.components.{component}.config.{name}=0.0"
    for component in ("text", "vision")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob")
]
STEPS = 20
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def train_args(manifest: Path, output: Path, *overrides: str) -> list[str]:
    """``train clip-tiny`` arguments: every step logged, checkpoints at half and end."""
    settings = [
        f"data.sources.train.path={manifest}",
        f"train.steps={STEPS}",
        "train.log_every=1",
        f"train.checkpoint_every={STEPS // 2}",
        *overrides,
    ]
    sets = [part for setting in settings for part in ("--set", setting)]
    return ["train", "clip-tiny", *sets, "--output", str(output), "--no-progress"]


def launch(args: list[str], processes: int, expect: int = 0) -> str:
    """Run ``modaloom`` in one process, or under torchrun with ``processes`` gloo ranks.

    Returns:
        stderr, after checking that the exit status is ``expect``.
    """
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    # a rank that aborts prints the Python stack of each thread (PYTHONFAULTHANDLER)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
    if processes == 1:
        command = [sys.executable, "-m", "modaloom", *args]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launcher, "--nproc_per_node", str(processes), "-m", "modaloom", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == expect, done.stdout + done.stderr
    return done.stderr


def read_metrics(run: Path) -> list[dict[str, float]]:
    """metrics.jsonl without the wall-clock field."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """Weights of the last checkpoint (step ``STEPS``)."""
    return load_file(run / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors")


def test_two_ranks_of_8_match_one_process_of_16(shapes_manifest: Path, tmp_path: Path) -> None:
    single, multi = tmp_path / "single", tmp_path / "multi"
    launch(train_args(shapes_manifest, single, "data.batch_size=16", *DROPOUT_OFF), 1)
    launch(train_args(shapes_manifest, multi, "data.batch_size=8", *DROPOUT_OFF), 2)

    one, two = read_metrics(single), read_metrics(multi)
    assert [m["step"] for m in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys() and a["stage"] == b["stage"] and a["lr"] == b["lr"]
        for name in ("loss", "itc/itc_loss", "itc/temperature"):
            assert abs(a[name] - b[name]) <= 1e-5 * max(1.0, abs(a[name])), (a, b)
    ref, got = final_weights(single), final_weights(multi)
    assert ref.keys() == got.keys()
    for name in ref:
        assert_close(got[name], ref[name], rtol=1e-3, atol=2e-4, msg=name)
    checkpoint = multi / "checkpoints" / f"step-{STEPS:08d}"
    assert json.loads((checkpoint / "meta.json").read_text())["world_size"] == 2
    assert (checkpoint / "rng-rank0.pt").is_file() and (checkpoint / "rng-rank1.pt").is_file()


def test_two_rank_resume_reproduces_uninterrupted_run(
    shapes_manifest: Path, tmp_path: Path
) -> None:
    """Also evaluates during training (``train.eval_every``), gathered over both ranks: the
    evaluations are redone after the resume and match too."""
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    evaluate = (
        f"data.eval_sources={{test: {{type: jsonl, path: {shapes_manifest}}}}}",
        "eval=[{type: retrieval, source: test}]",
        "train.eval_every=8",
    )
    args = train_args(shapes_manifest, uninterrupted, "data.batch_size=8", *evaluate)
    launch(args, 2)
    shutil.copytree(uninterrupted, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step-{STEPS:08d}")  # as if killed before the end
    (resumed / "metrics.json").unlink()
    args = train_args(shapes_manifest, resumed, "data.batch_size=8", *evaluate)
    launch([*args, "--resume"], 2)

    assert read_metrics(resumed) == read_metrics(uninterrupted)  # steps 11..20 were redone
    evaluated = [m["step"] for m in read_metrics(resumed) if "eval/retrieval.t2v.r1" in m]
    assert evaluated == [8, 16, 20]
    assert (resumed / "metrics.json").read_text() == (uninterrupted / "metrics.json").read_text()
    ref, got = final_weights(uninterrupted), final_weights(resumed)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(got[name], ref[name]), name

    # the data position and the step count assume the same world: another one is refused
    error = launch([*train_args(shapes_manifest, resumed, "data.batch_size=8"), "--resume"], 1, 2)
    latest = resumed / "checkpoints" / f"step-{STEPS:08d}"
    assert error.splitlines()[-1] == (
        f"error: checkpoint {latest} was written by 2 process(es) and this run has 1; resume "
        "with 2 processes (data.batch_size is per process, so the global batch would change)"
    )


def test_evaluation_on_two_ranks_reports_one_process_metrics(
    registry: Registry, small_preset: Callable[[str], dict[str, Any]], tmp_path: Path
) -> None:
    """``modaloom eval`` under torchrun: each rank evaluates its share of the batches, results
    are gathered in source order, each batch once, and only rank 0 writes metrics.json.

    Retrieval (three directions), zero-shot, captioning and QA of valor-tiny; 24 test clips in
    batches of 5 (rank 0 takes 3 batches, rank 1 takes 2) and in one batch of 24 (rank 1 has
    none). The two ranks run the same forward passes on the same batches as one process, so
    the metrics are equal, not merely close.
    """
    tree = small_preset("valor-tiny")
    run = tmp_path / "run"
    train(load_spec(tree, registry=registry), run, registry=registry, show_progress=False)
    loaded = load_run(run, registry=registry)
    for batch_size in (5, 24):
        spec = load_spec(tree, [f"data.eval_batch_size={batch_size}"], registry=registry)
        expected = run_evaluators(
            spec, loaded.model, loaded.processors, loaded.sources, registry, loaded.device
        )
        output = tmp_path / f"metrics-{batch_size}.json"
        args = ["eval", str(run / "spec.yaml"), "--checkpoint", str(run), "--output", str(output)]
        launch([*args, "--set", f"data.eval_batch_size={batch_size}"], 2)
        assert json.loads(output.read_text()) == dict(sorted(expected.items()))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "metrics-24.json",
        "metrics-5.json",
        "run",
    ]
