"""The batch plan: same stream with any number of workers and ranks, exact resume."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from modaloom.core.data import SampleDecoder
from modaloom.core.errors import DataError, MediaDecodeError
from modaloom.core.interfaces import Processor, RawSample, Source
from modaloom.core.stream import StreamPlan, TrainStream, make_train_loader, split_sources


class KeyProcessor(Processor):
    """Turns a text into its length; "bad" is corrupt."""

    def process(self, value: Any, *, key: str, train: bool, rng: random.Random) -> dict:
        if value == "bad":
            raise MediaDecodeError(key, "bad value")
        return {"value": torch.tensor([len(value), rng.randint(0, 10**6)])}

    def collate(self, items: list) -> dict:
        return {
            "value": torch.stack([i["value"] for i in items]),
            "present": torch.ones(len(items), dtype=torch.bool),
        }


class Listed(Source):
    def __init__(self, count: int, map_style: bool = True, bad: tuple[int, ...] = ()) -> None:
        self.samples = [
            {"__key__": f"s{i}", "text": "bad" if i in bad else "x" * (i + 1)} for i in range(count)
        ]
        self.map_style = map_style

    def iter_raw(self) -> Iterator[RawSample]:
        yield from (dict(s) for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> RawSample:
        return dict(self.samples[index])


class Streamed(Listed):
    __len__ = Source.__len__  # type: ignore[assignment]
    __getitem__ = Source.__getitem__  # type: ignore[assignment]


def collect(
    sources: list[Source],
    stop: int,
    batch: int,
    workers: int = 0,
    rank: int = 0,
    world: int = 1,
    micro: int = 0,
    cursors: list[int] | None = None,
) -> list[list]:
    plan = StreamPlan(
        names=[f"s{i}" for i in range(len(sources))],
        weights=[1.0] * len(sources),
        lengths=[len(s) if s.is_map_style else None for s in sources],
        seed=3,
        batch_size=batch,
        mixing="sample",
        group=world,
    )
    for _ in range(micro):
        plan.next_micro_batch()
    if cursors is not None:
        plan.cursors = cursors
    decoder = SampleDecoder({"text": KeyProcessor()}, train=True)
    stream = TrainStream(sources, plan, decoder, stop=stop, rank=rank, world=world)
    return [
        [(k, v.tolist()) for k, v in zip(b["__keys__"], b["text"]["value"], strict=True)]
        for b in make_train_loader(stream, workers)
    ]


@pytest.mark.parametrize("map_style", [True, False])
def test_workers_do_not_change_the_stream(map_style: bool) -> None:
    source = Listed(10) if map_style else Streamed(10)
    alone = collect([source], stop=6, batch=4)
    assert collect([source], stop=6, batch=4, workers=2) == alone
    keys = [k for batch in alone for k, _ in batch]
    assert sorted(keys[:10]) == sorted(f"s{i}" for i in range(10))  # one epoch, each once


def test_two_ranks_split_the_single_process_stream() -> None:
    single = collect([Listed(40)], stop=3, batch=8)
    rank0 = collect([Listed(40)], stop=3, batch=4, rank=0, world=2)
    rank1 = collect([Listed(40)], stop=3, batch=4, rank=1, world=2)
    for step in range(3):  # same samples and augmentations, split by rank
        assert rank0[step] + rank1[step] == single[step]


def test_streaming_resume_after_an_epoch_wrap() -> None:
    source = Streamed(4)
    whole = collect([source], stop=4, batch=3)
    plan = StreamPlan(names=["s0"], weights=[1.0], lengths=[None], seed=3, batch_size=3)
    for _ in range(2):
        plan.next_micro_batch()
    resumed = collect([source], stop=4, batch=3, micro=2, cursors=plan.cursors)
    assert resumed == whole[2:]


def test_corrupt_samples_are_skipped_and_counted() -> None:
    plan = StreamPlan(names=["s"], weights=[1.0], lengths=[6], seed=0, batch_size=6)
    decoder = SampleDecoder({"text": KeyProcessor()}, train=True)
    batch = next(iter(TrainStream([Listed(6, bad=(1, 4))], plan, decoder, stop=1)))
    assert len(batch["__keys__"]) == 4
    assert sorted(batch["__skipped__"]) == [("s1", "bad value"), ("s4", "bad value")]
    strict = SampleDecoder({"text": KeyProcessor()}, train=True, on_error="raise")
    with pytest.raises(MediaDecodeError, match="cannot decode sample 's1': bad value"):
        next(iter(TrainStream([Listed(6, bad=(1,))], plan.copy(), strict, stop=1)))


def test_all_corrupt_batch_stops_with_a_message() -> None:
    plan = StreamPlan(names=["s"], weights=[1.0], lengths=[2], seed=0, batch_size=2)
    decoder = SampleDecoder({"text": KeyProcessor()}, train=True)
    with pytest.raises(DataError, match="every sample of micro-batch 0 failed to decode"):
        next(iter(TrainStream([Listed(2, bad=(0, 1))], plan, decoder, stop=1)))


def test_batch_mixing_takes_one_source_per_step() -> None:
    plan = StreamPlan(
        names=["a", "b"],
        weights=[1.0, 1.0],
        lengths=[5, 5],
        seed=1,
        batch_size=4,
        mixing="batch",
        group=2,
    )
    for _ in range(10):
        first, second = plan.next_micro_batch(), plan.next_micro_batch()
        assert len({s for s, _ in first + second}) == 1


class Shared(Streamed):
    """A streaming source that splits: reader r of R reads samples r, r + R, ... endlessly."""

    def split_stream(self, reader: int, readers: int, skip: int = 0) -> Iterator[RawSample]:
        share = [dict(s) for s in self.samples[reader::readers]]
        return itertools.islice(itertools.cycle(share), skip, None)


def shared_plan(source: Source, workers: int) -> StreamPlan:
    return StreamPlan(
        ["s"], [1.0], [None], 3, 3, workers=workers, split=split_sources([source], workers)
    )


def shared_batches(source: Source, plan: StreamPlan, workers: int) -> list[list]:
    decoder = SampleDecoder({"text": KeyProcessor()}, train=True)
    stream = TrainStream([source], plan, decoder, stop=7)
    return [
        [(k, v.tolist()) for k, v in zip(b["__keys__"], b["text"]["value"], strict=True)]
        for b in make_train_loader(stream, workers)
    ]


def test_split_source_readers_resume_from_their_own_counts() -> None:
    source = Shared(11)
    assert split_sources([source, Streamed(3), Listed(3)], 2) == [True, False, False]
    whole = shared_batches(source, shared_plan(source, 2), workers=2)
    for micro, batch in enumerate(whole):  # micro-batch m comes from reader m % 2 only
        assert {int(k[1:]) % 2 for k, _ in batch} == {micro % 2}
    tracker = shared_plan(source, 2)
    for _ in range(3):
        tracker.next_micro_batch()
    assert tracker.state_dict() == {
        "micro": 3,
        "cursors": [9],
        "readers": 2,
        "reader_cursors": [[6, 3]],
    }
    plan = shared_plan(source, 2)
    plan.load_state(tracker.state_dict())
    assert shared_batches(source, plan, workers=2) == whole[3:]


def test_split_source_resume_needs_the_same_readers_and_split() -> None:
    source = Shared(11)
    saved = shared_plan(source, 2).state_dict()
    with pytest.raises(DataError) as info:
        shared_plan(source, 1).load_state(saved)
    assert str(info.value) == (
        "cannot resume the data stream: split source(s) ['s'] were read by 2 readers "
        "(processes x DataLoader workers) and this run has 1; resume with the same "
        "data.num_workers (2) as the checkpoint"
    )
    unsplit = StreamPlan(["s"], [1.0], [None], 3, 3).state_dict()
    with pytest.raises(DataError) as info:
        shared_plan(source, 2).load_state(unsplit)
    assert str(info.value) == (
        "cannot resume the data stream: the checkpoint read 's' with split_shards: false; "
        "resume with the same split_shards"
    )
    with pytest.raises(DataError) as info:
        next(iter(TrainStream([source], shared_plan(source, 2), SampleDecoder({}, True), 2)))
    assert str(info.value) == (
        "the plan splits sources among 2 workers per process, but the DataLoader has 1"
    )


class StrategyProcessor(KeyProcessor):
    """Records the tensor sharing strategy of the process that decodes the sample."""

    def process(self, value: Any, *, key: str, train: bool, rng: random.Random) -> dict:
        strategy = torch.multiprocessing.get_sharing_strategy()
        return {"value": torch.tensor([strategy == "file_system", len(value)])}


def test_workers_send_tensors_by_name_and_leave_the_main_process_alone() -> None:
    before = torch.multiprocessing.get_sharing_strategy()
    plan = StreamPlan(["s"], [1.0], [10], seed=3, batch_size=4)
    decoder = SampleDecoder({"text": StrategyProcessor()}, train=True)
    stream = TrainStream([Listed(10)], plan, decoder, stop=4)
    in_workers = [b["text"]["value"][:, 0].tolist() for b in make_train_loader(stream, 2)]
    assert in_workers == [[1, 1, 1, 1]] * 4
    assert torch.multiprocessing.get_sharing_strategy() == before == "file_descriptor"
