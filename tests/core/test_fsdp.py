"""FSDP2 on CPU: two gloo ranks shard clip-tiny with ``fully_shard`` through Accelerate.

Accelerate (1.15) turns ``ACCELERATE_USE_FSDP=true`` into FSDP only with an accelerator: on CPU
it keeps ``MULTI_CPU`` (DDP over gloo) and the runner warns. FSDP2 itself runs on CPU with gloo,
so this file is also the launcher: run as a script (under torchrun) it lets Accelerate take its
FSDP path on CPU (`take_fsdp_path_on_cpu` sets the two fields Accelerate sets on a GPU: the
distributed type and a plugin read from the same ``FSDP_*`` variables), then runs the modaloom
CLI. Everything else is the real code: Accelerate's FSDP2 ``prepare`` (``fully_shard`` of every
``BertLayer``/``ViTLayer`` and of the root), its clipping and accumulation, and the runner.

1. Two sharded ranks with ``data.batch_size=8`` train what one process with 16 trains (dropout
   off; see tests/core/test_multiprocess.py for why that holds). Losses, the final weights and
   the optimizer state agree to a tolerance, not bitwise: FSDP2 reduce-scatters gradients where
   one process sums per-sample terms in one pass, and matrix products over 8 and 16 rows block
   their sums differently. The checkpoint holds the full weights (same names and shapes as the
   single process's) and the full optimizer state, in the same format.
2. The two-rank FSDP run resumed from its step-3 checkpoint reproduces the uninterrupted FSDP run
   bitwise (metrics, weights, optimizer state): same world, same shards, same data position and
   the same reductions in the same order, so an exact comparison is the right one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file, save_model
from torch import nn
from torch.testing import assert_close

from modaloom.core.checkpoint import (
    MODEL_FILE,
    FullWeights,
    read_weights,
    save_weights,
    shared_names,
)
from modaloom.core.errors import ModaloomError
from modaloom.core.fsdp import check_strategy

STEPS = 6
DROPOUT_OFF = [
    f"model.components.{component}.config.{name}=0.0"
    for component in ("text", "vision")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob")
]
FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "BertLayer,ViTLayer",
}
INHERITED = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def take_fsdp_path_on_cpu() -> None:
    """Make every `Accelerator` built in this process use FSDP on CPU processes (gloo)."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    build = Accelerator.__init__

    def init(self: Accelerator, *args: Any, **kwargs: Any) -> None:
        build(self, *args, **kwargs)
        if self.state.distributed_type == DistributedType.MULTI_CPU:
            self.state.fsdp_plugin = FullyShardedDataParallelPlugin()
            self.state.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    Accelerator.__init__ = init  # type: ignore[method-assign]


def launch(args: list[str], fsdp: bool) -> str:
    """``modaloom ARGS`` in one process, or with ``fsdp`` under torchrun with two FSDP2 ranks.

    Returns:
        stderr (the run must succeed).
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in INHERITED and not k.startswith(("ACCELERATE_", "FSDP_"))
    }
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if fsdp:
        env.update(FSDP_ENV)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = [*launcher, "--nproc_per_node", "2", __file__, "-v", *args]
    else:
        command = [sys.executable, "-m", "modaloom", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stderr


def train_args(manifest: Path, output: Path, batch: int) -> list[str]:
    """``train clip-tiny`` for `STEPS` steps, every step logged, checkpoints at 3 and 6."""
    settings = [
        f"data.sources.train.path={manifest}",
        f"data.batch_size={batch}",
        f"train.steps={STEPS}",
        "train.log_every=1",
        f"train.checkpoint_every={STEPS // 2}",
        *DROPOUT_OFF,
    ]
    sets = [part for setting in settings for part in ("--set", setting)]
    return ["train", "clip-tiny", *sets, "--output", str(output), "--no-progress"]


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock field."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"} for line in lines]


def final(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and ``state.pt`` of the checkpoint at step `STEPS`."""
    directory = run / "checkpoints" / f"step-{STEPS:08d}"
    state = torch.load(directory / "state.pt", weights_only=True)
    return load_file(directory / "model.safetensors"), state


@pytest.fixture(scope="module")
def runs(shapes_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A single process of 16, two FSDP2 ranks of 8, and the latter resumed from step 3."""
    root = tmp_path_factory.mktemp("fsdp")
    single, sharded, resumed = root / "single", root / "sharded", root / "resumed"
    launch(train_args(shapes_manifest, single, 16), fsdp=False)
    log = launch(train_args(shapes_manifest, sharded, 8), fsdp=True)
    shutil.copytree(sharded, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step-{STEPS:08d}")  # as if killed before the end
    launch([*train_args(shapes_manifest, resumed, 8), "--resume"], fsdp=True)
    return {"single": single, "sharded": sharded, "resumed": resumed, "log": log}


def test_fsdp_trains_like_one_process_and_saves_full_state(runs: dict[str, Any]) -> None:
    assert "0-d parameters stay replicated" in runs["log"]  # Accelerate took the FSDP2 path
    assert "training runs without FSDP" not in runs["log"]
    one, two = read_metrics(runs["single"]), read_metrics(runs["sharded"])
    assert [m["step"] for m in two] == list(range(1, STEPS + 1))
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys() and a["lr"] == b["lr"]
        for name in ("loss", "itc/itc_loss", "itc/temperature"):
            assert abs(a[name] - b[name]) <= 1e-5 * max(1.0, abs(a[name])), (a, b)

    (ref, ref_state), (got, got_state) = final(runs["single"]), final(runs["sharded"])
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
    for name in ref:
        assert_close(got[name], ref[name], rtol=1e-3, atol=2e-4, msg=name)
    ref_opt, got_opt = ref_state["optimizer"], got_state["optimizer"]
    assert got_opt["param_groups"] == ref_opt["param_groups"]
    assert got_opt["state"].keys() == ref_opt["state"].keys()
    for index, entry in ref_opt["state"].items():
        for key, value in entry.items():
            assert_close(got_opt["state"][index][key], value, rtol=1e-3, atol=1e-7)


def test_fsdp_resume_reproduces_uninterrupted_run(runs: dict[str, Any]) -> None:
    assert read_metrics(runs["resumed"]) == read_metrics(runs["sharded"])  # steps 4..6 redone
    (ref, ref_state), (got, got_state) = final(runs["sharded"]), final(runs["resumed"])
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(got[name], ref[name]), name
    ref_opt, got_opt = ref_state["optimizer"], got_state["optimizer"]
    for index, entry in ref_opt["state"].items():
        for key, value in entry.items():
            assert torch.equal(got_opt["state"][index][key], value), (index, key)


AVERAGE_CHECK = """
import torch
import torch.distributed as dist
from torch import nn

from modaloom.core.fsdp import average_replicated_gradients

dist.init_process_group("gloo")
rank = dist.get_rank()


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.t, self.u, self.v, self.w = (nn.Parameter(torch.tensor(1.0)) for _ in range(4))

    def forward(self, x):
        loss = self.t * x + self.w + (5 * self.u if rank == 0 else 0)
        return loss, {}


model = Model()
average_replicated_gradients(model, [model.t, model.u, model.v])
x = torch.tensor(float(rank + 1))  # d loss / d t is 1 on rank 0 and 2 on rank 1
model(x)[0].backward()
assert model.t.grad.item() == 1.5  # the mean over ranks
assert model.u.grad.item() == 2.5  # used on rank 0 only: rank 1 counts zero
assert model.v.grad is None  # used on no rank: no gradient, as with DDP
assert model.w.grad.item() == 1.0  # not replicated by us: left alone
model(x)[0].backward()  # a second micro-batch accumulates
assert model.t.grad.item() == 3.0 and model.u.grad.item() == 5.0
with torch.no_grad():
    model(x)  # no backward pass: no reduction queued
dist.destroy_process_group()
"""


def test_replicated_gradients_are_averaged_once_per_backward(tmp_path: Path) -> None:
    """The 0-d parameters FSDP2 leaves replicated get DDP's mean gradient, on two gloo ranks.

    (In the clip-tiny runs above every rank computes the same ITC loss over gathered
    embeddings, so the temperature's gradient is the same everywhere and cannot show this.)
    """
    script = tmp_path / "average_check.py"
    script.write_text(AVERAGE_CHECK)
    env = {k: v for k, v in os.environ.items() if k not in INHERITED}
    env.update(OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*launcher, "--nproc_per_node", "2", str(script)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def header_and_data(path: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's JSON header and its data bytes."""
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + size]), raw[8 + size :]


def test_full_weights_file_matches_save_model(tmp_path: Path) -> None:
    """Gathered weights are written as ``save_model`` writes the model: tied tensors once."""
    model = nn.ModuleDict({"a": nn.Linear(3, 4), "b": nn.Linear(4, 2)})
    model["c"] = model["a"]  # a shared submodule, as decoders sharing the text encoder are
    plain, full = tmp_path / "plain", tmp_path / "full"
    plain.mkdir()
    full.mkdir()
    save_model(model, str(plain / MODEL_FILE))
    gathered = {k: v.detach().clone() for k, v in model.state_dict().items()}  # no sharing left
    assert shared_names(model) == [["a.bias", "c.bias"], ["a.weight", "c.weight"]]
    save_weights(FullWeights(gathered, shared_names(model)), full / MODEL_FILE)

    assert header_and_data(full / MODEL_FILE) == header_and_data(plain / MODEL_FILE)
    restored = read_weights(full)
    assert list(restored) == sorted(gathered)  # the same order in every process
    for name in gathered:
        assert torch.equal(restored[name], gathered[name]), name


def test_ignored_fsdp_request_is_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    accelerator = SimpleNamespace(
        distributed_type=DistributedType.MULTI_CPU, is_main_process=True, is_fsdp2=False
    )
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with caplog.at_level(logging.WARNING, logger="modaloom.core.fsdp"):
        check_strategy(accelerator)  # type: ignore[arg-type]
    assert "ACCELERATE_USE_FSDP=true but Accelerate chose MULTI_CPU" in caplog.text


def test_deepspeed_and_fsdp1_are_refused() -> None:
    deepspeed = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED, is_main_process=True, is_fsdp2=False
    )
    with pytest.raises(ModaloomError, match="DeepSpeed is not supported"):
        check_strategy(deepspeed)  # type: ignore[arg-type]
    fsdp1 = SimpleNamespace(
        distributed_type=DistributedType.FSDP, is_main_process=True, is_fsdp2=False
    )
    with pytest.raises(ModaloomError, match="set fsdp_version: 2"):
        check_strategy(fsdp1)  # type: ignore[arg-type]


if __name__ == "__main__":  # the launcher of the FSDP runs above, one process per rank
    take_fsdp_path_on_cpu()
    from modaloom.core.cli import main

    sys.exit(main())
