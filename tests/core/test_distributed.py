"""Tests of the cross-rank gathers: identity in one process, and 2 gloo ranks vs one process.

The two-rank check runs this file as a script (``python test_distributed.py OUT PORT``), which
spawns two gloo processes on CPU; each saves its loss and gradients and the test compares them
with a single-process computation over the concatenated global batch. Convention checked (see
``modaloom.core.distributed``): every rank computes the same global-batch loss, each local input
receives ``world_size`` times its single-process gradient, and DDP-style averaging of parameter
gradients gives exactly the single-process parameter gradients.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from modaloom.core.distributed import (
    gather_in_order,
    gather_no_grad,
    gather_objects,
    gather_with_grad,
    is_distributed,
    rank,
    world_size,
)
from modaloom.core.momentum import FeatureQueue
from modaloom.objectives.functional import contrastive_loss

SIZES = (3, 4)  # uneven local batches on purpose
TAU = 0.1
RANK_ITEMS = (  # batch results by (index, value); both ranks hold index 2
    [(4, "e0"), (0, "a0"), (2, "c0")],
    [(1, "b1"), (2, "c1"), (3, "d1")],
)


def _global_batch() -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    return torch.randn(n, 6, generator=g), torch.randn(n, 5, generator=g), torch.arange(n) % 3


def _heads() -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(1)  # identical initial weights on every rank, as DDP guarantees
    return nn.Linear(6, 4), nn.Linear(5, 4)


def _loss(proj_a: nn.Linear, proj_b: nn.Linear, xa: Tensor, xb: Tensor, labels: Tensor) -> Tensor:
    za = gather_with_grad(F.normalize(proj_a(xa), dim=1))
    zb = gather_with_grad(F.normalize(proj_b(xb), dim=1))
    return contrastive_loss(za, zb, TAU, labels=gather_no_grad(labels))


def _queue_after(features: Tensor, ids: Tensor) -> dict[str, Tensor]:
    queue = FeatureQueue(5, {"a": 4}, generator=torch.Generator().manual_seed(2))
    queue.enqueue({"a": features}, ids=ids)
    return dict(queue.state_dict())


def _worker(local_rank: int, port: int, out: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=local_rank,
        world_size=len(SIZES),
        timeout=timedelta(seconds=60),
    )
    try:
        xa, xb, labels = _global_batch()
        part = slice(sum(SIZES[:local_rank]), sum(SIZES[: local_rank + 1]))
        xa, xb, labels = xa[part].requires_grad_(), xb[part].requires_grad_(), labels[part]
        proj_a, proj_b = _heads()
        loss = _loss(proj_a, proj_b, xa, xb, labels)
        loss.backward()
        params = [*proj_a.parameters(), *proj_b.parameters()]
        for p in params:  # what DDP does: average parameter gradients over ranks
            assert p.grad is not None
            dist.all_reduce(p.grad)
            p.grad /= world_size()
        result: dict[str, Any] = {
            "world": (is_distributed(), world_size(), rank()),
            "loss": loss.detach(),
            "grad_xa": xa.grad,
            "grad_xb": xb.grad,
            "param_grads": [p.grad for p in params],
            "flags": gather_no_grad(labels == 1),
            "queue": _queue_after(proj_a(xa).detach(), ids=labels * 10),
            "objects": gather_objects({"rank": local_rank}),
            "in_order": gather_in_order(RANK_ITEMS[local_rank]),
        }
        torch.save(result, Path(out) / f"rank{local_rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("gloo")
    proc = subprocess.run(
        [sys.executable, __file__, str(out), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(len(SIZES))]


def test_two_rank_loss_and_gradients_match_one_process(two_ranks: list[dict[str, Any]]) -> None:
    xa, xb, labels = (t.clone() for t in _global_batch())
    xa.requires_grad_()
    xb.requires_grad_()
    proj_a, proj_b = _heads()
    loss = _loss(proj_a, proj_b, xa, xb, labels)  # identity gathers: one process
    loss.backward()
    assert xa.grad is not None and xb.grad is not None
    start = 0
    for r, result in enumerate(two_ranks):
        assert result["world"] == (True, 2, r)
        assert_close(result["loss"], loss.detach())
        part = slice(start, start + SIZES[r])
        assert_close(result["grad_xa"], 2 * xa.grad[part])
        assert_close(result["grad_xb"], 2 * xb.grad[part])
        for got, p in zip(result["param_grads"], [*proj_a.parameters(), *proj_b.parameters()]):
            assert_close(got, p.grad)
        assert torch.equal(result["flags"], labels == 1)
        start += SIZES[r]


def test_two_rank_queues_hold_the_global_batch(two_ranks: list[dict[str, Any]]) -> None:
    xa, _, labels = _global_batch()
    proj_a, _ = _heads()
    with torch.no_grad():
        expected = _queue_after(proj_a(xa), ids=labels * 10)
    for result in two_ranks:
        for key, value in expected.items():
            assert_close(result["queue"][key], value)


def test_two_rank_results_are_gathered_in_order_once(two_ranks: list[dict[str, Any]]) -> None:
    for result in two_ranks:
        assert result["objects"] == [{"rank": 0}, {"rank": 1}]
        assert result["in_order"] == ["a0", "b1", "c0", "d1", "e0"]  # index 2 from rank 0


def test_single_process_helpers_are_identities() -> None:
    assert not is_distributed() and world_size() == 1 and rank() == 0
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x
    gathered = gather_no_grad(x)
    assert not gathered.requires_grad and torch.equal(gathered, x)
    assert gather_objects("x") == ["x"]
    assert gather_in_order([(1, "b"), (0, "a"), (1, "b2")]) == ["a", "b"]


if __name__ == "__main__":
    mp.spawn(_worker, args=(int(sys.argv[2]), sys.argv[1]), nprocs=len(SIZES), join=True)
