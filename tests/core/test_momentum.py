"""Tests of the momentum (EMA) copies and the ring-buffer feature queues."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from modaloom.core.momentum import FeatureQueue, MomentumCopy


def _online() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"vision": nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), "proj": nn.Linear(4, 2)}


def test_momentum_copy_starts_equal_and_frozen() -> None:
    online = _online()
    ema = MomentumCopy(online)
    for name, module in online.items():
        for (key, p), (key_hat, p_hat) in zip(
            module.state_dict().items(), ema[name].state_dict().items()
        ):
            assert key == key_hat and torch.equal(p, p_hat)
        assert all(not p.requires_grad for p in ema[name].parameters())
        assert all(p.requires_grad for p in module.parameters())
        assert ema[name] is not module


def test_momentum_update_is_ema_of_parameters_and_copies_buffers() -> None:
    online = _online()
    ema = MomentumCopy(online)
    before = {n: {k: v.clone() for k, v in ema[n].state_dict().items()} for n in online}
    with torch.no_grad():
        for module in online.values():
            for p in module.parameters():
                p.add_(1.0)
    online["vision"](torch.randn(5, 3))  # moves the batch-norm running statistics
    ema.update(online, momentum=0.9)
    for name, module in online.items():
        hat_state = ema[name].state_dict()
        params = dict(module.named_parameters())
        for key, value in module.state_dict().items():
            if key in params:
                assert_close(hat_state[key], 0.9 * before[name][key] + 0.1 * value)
            else:
                assert torch.equal(hat_state[key], value)


def test_momentum_update_extremes_and_errors() -> None:
    online = _online()
    ema = MomentumCopy(online)
    proj = online["proj"]
    assert isinstance(proj, nn.Linear)
    with torch.no_grad():
        proj.weight.mul_(3.0)
    ema.update(online, momentum=1.0)
    assert not torch.equal(ema["proj"].state_dict()["weight"], proj.weight)
    ema.update(online, momentum=0.0)
    assert torch.equal(ema["proj"].state_dict()["weight"], proj.weight)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0, 1\], got 1.5"):
        ema.update(online, momentum=1.5)
    with pytest.raises(ValueError, match=r"MomentumCopy follows \['proj', 'vision'\]"):
        ema.update({"proj": online["proj"]}, momentum=0.5)
    with pytest.raises(ValueError, match="parameters of 'proj' differ from its momentum copy"):
        ema.update({"proj": nn.Linear(4, 2, bias=False), "vision": online["vision"]}, 0.5)


def test_momentum_copy_is_checkpointed() -> None:
    ema = MomentumCopy(_online())
    keys = set(ema.state_dict())
    assert "copies.proj.weight" in keys and "copies.vision.1.running_mean" in keys


def test_queue_initial_state() -> None:
    queue = FeatureQueue(6, {"image": 4, "text": 3}, generator=torch.Generator().manual_seed(0))
    for name, dim in (("image", 4), ("text", 3)):
        feats = queue.features(name)
        assert feats.shape == (6, dim)
        assert_close(feats.norm(dim=1), torch.ones(6))
    assert queue.queued_ids().tolist() == [-1] * 6 and queue.queued_labels().tolist() == [-1] * 6
    assert int(queue.ptr) == 0 and int(queue.filled) == 0 and not queue.is_full
    keys = set(queue.state_dict())
    assert keys == {"image_queue", "text_queue", "ids", "labels", "ptr", "filled"}


@pytest.mark.parametrize(("size", "batches"), [(5, [3, 3, 3, 1]), (4, [2, 2, 2]), (3, [7, 1])])
def test_queue_ring_matches_a_list_simulation(size: int, batches: list[int]) -> None:
    queue = FeatureQueue(size, {"image": 2})
    rows: list[list[float] | None] = [None] * size
    ids = [-1] * size
    ptr, counter = 0, 0
    for n in batches:
        feats = torch.arange(counter, counter + n, dtype=torch.float32)[:, None].repeat(1, 2)
        batch_ids = torch.arange(counter, counter + n) * 10
        queue.enqueue({"image": feats}, ids=batch_ids)
        for k in range(n):  # sequential writes: the reference semantics
            rows[ptr] = feats[k].tolist()
            ids[ptr] = int(batch_ids[k])
            ptr = (ptr + 1) % size
        counter += n
        assert int(queue.ptr) == ptr
        assert int(queue.filled) == min(counter, size)
        assert queue.queued_ids().tolist() == ids
        written = [i for i, row in enumerate(rows) if row is not None]
        assert queue.features("image")[written].tolist() == [rows[i] for i in written]
        assert queue.filled_mask().tolist() == [i < min(counter, size) for i in range(size)]
    assert queue.queued_labels().tolist() == [-1] * size
    assert queue.is_full


def test_queue_labels_overwrite_stale_entries_and_accessors_copy() -> None:
    queue = FeatureQueue(3, {"a": 2, "b": 2})
    feats = {"a": torch.ones(3, 2), "b": torch.zeros(3, 2)}
    queue.enqueue(feats, ids=torch.tensor([1, 2, 3]), labels=torch.tensor([4, 5, 6]))
    queue.enqueue({k: v[:2] for k, v in feats.items()})
    assert queue.queued_ids().tolist() == [-1, -1, 3]
    assert queue.queued_labels().tolist() == [-1, -1, 6]
    snapshot = queue.features("a")
    snapshot.zero_()
    assert torch.equal(queue.features("a"), torch.ones(3, 2))


def test_queue_checkpoint_round_trip() -> None:
    queue = FeatureQueue(4, {"image": 2})
    queue.enqueue({"image": torch.randn(3, 2)}, labels=torch.tensor([1, 2, 3]))
    restored = FeatureQueue(4, {"image": 2})
    restored.load_state_dict(queue.state_dict())
    for key, value in queue.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
    assert int(restored.filled) == 3 and int(restored.ptr) == 3


def test_queue_errors() -> None:
    with pytest.raises(ValueError, match="queue size must be positive, got 0"):
        FeatureQueue(0, {"a": 2})
    with pytest.raises(ValueError, match="queue names must be identifiers"):
        FeatureQueue(2, {"ids": 2})
    queue = FeatureQueue(4, {"a": 2, "b": 2})
    with pytest.raises(ValueError, match=r"enqueue needs features for \['a', 'b'\], got \['a'\]"):
        queue.enqueue({"a": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="queue 'b' expects"):
        queue.enqueue({"a": torch.zeros(2, 2), "b": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"ids must have shape \(2,\), got \(3,\)"):
        queue.enqueue({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, ids=torch.zeros(3))
    with pytest.raises(KeyError, match="no queue named 'c'"):
        queue.features("c")


def _queue_with(size: int, ids: list[int]) -> FeatureQueue:
    queue = FeatureQueue(size, {"a": 2}, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor(ids)
    queue.enqueue({"a": torch.stack([rows, rows], 1).float()}, ids=rows)
    return queue


def test_resized_queue_keeps_the_newest_rows_oldest_first() -> None:
    wrapped = _queue_with(4, [0, 1, 2, 3, 4, 5])  # rows hold ids [4, 5, 2, 3], ptr 2
    assert wrapped.ids.tolist() == [4, 5, 2, 3] and int(wrapped.ptr) == 2
    smaller = FeatureQueue(3, {"a": 2})
    state = smaller.resized_state(wrapped.state_dict())
    assert state["ids"].tolist() == [3, 4, 5] and state["a_queue"][:, 0].tolist() == [3, 4, 5]
    assert (int(state["ptr"]), int(state["filled"])) == (0, 3)
    partial = _queue_with(6, [0, 1, 2, 3])  # four real rows, two random ones
    larger = FeatureQueue(10, {"a": 2}, generator=torch.Generator().manual_seed(1))
    state = larger.resized_state(partial.state_dict())
    assert state["ids"].tolist() == [0, 1, 2, 3] + [-1] * 6
    assert torch.equal(state["a_queue"][4:], larger.a_queue[4:])  # its own initial rows
    assert (int(state["ptr"]), int(state["filled"])) == (4, 4)
    larger.load_state_dict(state)
    assert larger.filled_mask().tolist() == [True] * 4 + [False] * 6
