"""The training stream: a plan of which sample fills each slot, and the stream that decodes it.

The training stream is a pure function of (seed, stage, micro-batch index): every worker and
every rank computes the same plan of (source, position) pairs and decodes only its own
micro-batches, so the stream is identical with 0, 1 or N workers and a resumed run continues
exactly where the checkpoint left off.

A streaming source that can split (`Source.split_stream`, webdataset shards) is the exception:
each (rank, worker slot) reader reads only its own share, so that source's stream depends on
the number of readers; the plan counts each reader's draws, which is what resumes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from modaloom.core.data import SampleDecoder, send_tensors_by_name
from modaloom.core.errors import DataError
from modaloom.core.interfaces import Batch, RawSample, Source


@dataclass
class StreamPlan:
    """Which sample of which source fills each slot of each micro-batch.

    ``cursors[i]`` counts samples drawn so far from source i; a map-style source serves
    position c from a per-epoch seeded permutation. A split source (``split[i]``) is read in
    ``world * workers`` shares: plan micro-batch m is served by reader `reader` (m), and
    ``reader_cursors[i][reader]`` counts the samples that reader has drawn from its share.
    """

    names: list[str]
    weights: list[float]
    lengths: list[int | None]
    seed: int
    batch_size: int
    cursors: list[int] = field(default_factory=list)
    micro: int = 0
    mixing: str = "batch"
    """``batch``: one source per optimizer step (on every rank), as VALOR and OmniVL sample
    datasets; ``sample``: each sample draws its source."""
    group: int = 1
    """Consecutive micro-batches that share a source in ``batch`` mixing (the world size)."""
    world: int = 1
    """Processes; with ``workers`` it fixes the reader of each micro-batch (split sources)."""
    workers: int = 1
    """DataLoader workers per process (0 workers count as 1)."""
    split: list[bool] = field(default_factory=list)
    """Per source: read in per-reader shares (`Source.split_stream`); see `split_sources`."""
    reader_cursors: list[list[int]] = field(default_factory=list)
    """Per source: samples each reader drew from its share (an empty list when not split)."""

    def __post_init__(self) -> None:
        self.cursors = self.cursors or [0] * len(self.names)
        self.split = self.split or [False] * len(self.names)
        readers = self.world * self.workers
        self.reader_cursors = self.reader_cursors or [
            [0] * readers if s else [] for s in self.split
        ]
        self._perm: dict[tuple[int, int], np.ndarray] = {}

    def reader(self, micro: int) -> int:
        """The reader of plan micro-batch ``micro``: ``rank * workers + slot`` with rank
        ``micro % world`` and worker slot ``(micro // world) % workers``, whatever the resume
        point (so each reader's count survives a resume)."""
        return micro % self.world * self.workers + micro // self.world % self.workers

    def next_micro_batch(self) -> list[tuple[int, int]]:
        """(source index, source position) for each slot of the next micro-batch."""
        indices = range(len(self.names))
        per_sample = len(self.names) > 1 and self.mixing == "sample"
        step_source = 0  # one source: no draw (seeding a generator costs ~30 us)
        if len(self.names) > 1:
            step_rng = random.Random(f"plan:{self.seed}:step:{self.micro // self.group}")
            step_source = step_rng.choices(indices, self.weights)[0]
        rng = random.Random(f"plan:{self.seed}:{self.micro}") if per_sample else None
        reader = self.reader(self.micro)
        slots = []
        for _ in range(self.batch_size):
            source = step_source if rng is None else rng.choices(indices, self.weights)[0]
            slots.append((source, self.cursors[source]))
            self.cursors[source] += 1
            if self.split[source]:
                self.reader_cursors[source][reader] += 1
        self.micro += 1
        return slots

    def index(self, source: int, position: int) -> int:
        """Map a source position to a sample index (shuffled per epoch)."""
        length = self.lengths[source]
        assert length is not None
        epoch, offset = divmod(position, length)
        if (source, epoch) not in self._perm:
            self._perm = {k: v for k, v in self._perm.items() if k[0] != source}
            self._perm[(source, epoch)] = np.random.default_rng(
                [self.seed, source, epoch]
            ).permutation(length)
        return int(self._perm[(source, epoch)][offset])

    def copy(self) -> StreamPlan:
        """An independent plan at the same position."""
        return replace(
            self,
            cursors=list(self.cursors),
            split=list(self.split),
            reader_cursors=[list(c) for c in self.reader_cursors],
        )

    def state_dict(self) -> dict[str, Any]:
        """Position to save in a checkpoint (with split sources, each reader's count)."""
        state: dict[str, Any] = {"micro": self.micro, "cursors": list(self.cursors)}
        if any(self.split):
            state["readers"] = self.world * self.workers
            state["reader_cursors"] = [list(c) for c in self.reader_cursors]
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved `state_dict`.

        Raises:
            DataError: split sources, and the state was saved with other readers or splits.
        """
        self.micro, self.cursors = int(state["micro"]), list(state["cursors"])
        saved_split = [bool(c) for c in state.get("reader_cursors", [[]] * len(self.names))]
        if saved_split != self.split:
            read = ", ".join(
                f"{n!r} with split_shards: {str(a).lower()}"
                for n, a, b in zip(self.names, saved_split, self.split)
                if a != b
            )
            raise DataError(
                f"cannot resume the data stream: the checkpoint read {read}; resume with the "
                "same split_shards"
            )
        if not any(self.split):
            return
        saved, readers = int(state["readers"]), self.world * self.workers
        if saved != readers:
            hint = "0 or 1" if saved == self.world else str(saved // self.world)
            names = [n for n, split in zip(self.names, self.split) if split]
            raise DataError(
                f"cannot resume the data stream: split source(s) {names} were read by {saved} "
                f"readers (processes x DataLoader workers) and this run has {readers}; resume "
                f"with the same data.num_workers ({hint}) as the checkpoint"
            )
        self.reader_cursors = [list(c) for c in state["reader_cursors"]]


def split_sources(sources: Sequence[Source], readers: int) -> list[bool]:
    """Which streaming sources are read in per-reader shares (`Source.split_stream`).

    Raises:
        DataError: a source cannot be split among ``readers`` readers (too few shards).
    """
    return [not s.is_map_style and s.split_stream(0, readers) is not None for s in sources]


class TrainStream(IterableDataset):
    """Micro-batches ``start..stop-1`` of a plan; each DataLoader worker decodes its share.

    With ``world`` ranks, micro-batch m of rank r is plan batch ``m * world + r``. Worker w
    takes every ``workers``-th of its rank's micro-batches from the first after ``start``, and
    reads a split source through reader ``plan.reader(m)`` (rank, slot ``(w + start // world)
    % workers``), drawing from it only for its own micro-batches.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        plan: StreamPlan,
        decoder: SampleDecoder,
        stop: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.sources, self.plan, self.decoder = list(sources), plan, decoder
        self.stop, self.rank, self.world = stop, rank, world
        self._iterators: dict[int, Iterator[RawSample]] = {}
        self._shares: dict[int, Iterator[RawSample]] = {}
        if any(plan.split) and plan.world != world:
            raise DataError(f"the plan splits sources among {plan.world} processes, not {world}")

    def _raw(self, source: int, position: int) -> RawSample:
        src = self.sources[source]
        if src.is_map_style:
            return src[self.plan.index(source, position)]
        if self.plan.split[source]:
            return self._next_shared(source)
        return self._next_streamed(source)

    def _open_shares(self, plan: StreamPlan, reader: int) -> None:
        """This worker's share of each split source, past the samples its reader drew before."""
        for source, split in enumerate(plan.split):
            if split and source not in self._shares:
                skip = plan.reader_cursors[source][reader]
                readers = plan.world * plan.workers
                share = self.sources[source].split_stream(reader, readers, skip)
                if share is None:
                    raise DataError(f"data source {plan.names[source]!r} cannot be split")
                self._shares[source] = share

    def _next_shared(self, source: int) -> RawSample:
        """Next sample of this worker's share of a split source."""
        sample = next(self._shares[source], None)
        if sample is None:
            raise DataError(f"data source {self.plan.names[source]!r} yielded no sample")
        return sample

    def _next_streamed(self, source: int) -> RawSample:
        """Next sample of a streaming source; every worker reads every sample (no index)."""
        if source not in self._iterators:
            self._iterators[source] = self._restart(source, skip=self.plan.cursors[source])
        sample = next(self._iterators[source], None)
        if sample is None:
            self._iterators[source] = self._restart(source, skip=0)
            sample = next(self._iterators[source], None)
        if sample is None:
            raise DataError(f"data source {self.plan.names[source]!r} yielded no sample")
        return sample

    def _restart(self, source: int, skip: int) -> Iterator[RawSample]:
        """A fresh iterator advanced past ``skip`` samples (wrapping at the end of an epoch)."""
        iterator = iter(self.sources[source].iter_raw())
        skipped = 0
        while skipped < skip:
            if next(iterator, None) is not None:
                skipped += 1
                continue
            iterator = iter(self.sources[source].iter_raw())
            if next(iterator, None) is None:
                raise DataError(f"data source {self.plan.names[source]!r} yielded no sample")
            skipped += 1
        return iterator

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan.copy()
        if any(plan.split) and workers != plan.workers:
            raise DataError(
                f"the plan splits sources among {plan.workers} workers per process, "
                f"but the DataLoader has {workers}"
            )
        self._shares = {}
        start = plan.micro
        while plan.micro < self.stop * self.world:
            micro = plan.micro
            local = micro // self.world - start // self.world
            mine = micro % self.world == self.rank and local % workers == worker
            if mine:
                self._open_shares(plan, plan.reader(micro))
            slots = plan.next_micro_batch()
            if not mine:
                for source, _ in slots:  # unsplit streaming sources advance in every worker
                    if not self.sources[source].is_map_style and not plan.split[source]:
                        self._next_streamed(source)
                continue
            raws = [(self._raw(s, p), random.Random(f"aug:{plan.seed}:{s}:{p}")) for s, p in slots]
            decoded, skipped = self.decoder.decode_many(raws)
            if not decoded:
                reasons = "; ".join(f"{k}: {r}" for k, r in skipped[:3])
                raise DataError(f"every sample of micro-batch {micro} failed to decode ({reasons})")
            batch = self.decoder.collate(decoded, skipped)
            if len({s for s, _ in slots}) == 1:
                batch["__source__"] = plan.names[slots[0][0]]
            yield batch


def make_train_loader(stream: TrainStream, num_workers: int, seed: int = 0) -> DataLoader:
    """A DataLoader that keeps the stream's order (workers take micro-batches in turn).

    It has its own generator, so creating it never consumes the global torch RNG (a resumed run
    would otherwise draw different dropout masks). Workers send batches by name
    (`send_tensors_by_name`).
    """
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=2 if num_workers else None,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=send_tensors_by_name,
    )
