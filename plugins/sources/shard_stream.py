"""Reading a `WebDatasetSource`'s shards as a resumable stream: `ShardStream` and its
`StreamPosition`, with webdataset's shuffle buffer."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from modaloom.core.errors import DataError
from modaloom.core.interfaces import RawSample

if TYPE_CHECKING:
    from modaloom.plugins.sources.webdataset import LazySample, WebDatasetSource


@dataclass(frozen=True)
class StreamPosition:
    """Where a `ShardStream` is; pass it back as ``start`` to resume.

    Attributes:
        epoch: epoch number (it seeds the shuffles).
        shard: index into this reader's shard order of the epoch.
        sample: samples read from that shard so far.
        emitted: samples emitted in this epoch. With a shuffle buffer this is what resumes
            (the epoch is replayed and that many samples dropped, without decoding them).
    """

    epoch: int = 0
    shard: int = 0
    sample: int = 0
    emitted: int = 0

    def state_dict(self) -> dict[str, int]:
        """A JSON-serialisable copy."""
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, int]) -> StreamPosition:
        """Inverse of `state_dict`."""
        return cls(**state)


class ShardStream(Iterator[RawSample]):
    """Samples of a `WebDatasetSource` with a resumable `position` (see `StreamPosition`)."""

    def __init__(
        self,
        source: WebDatasetSource,
        start: StreamPosition,
        split: tuple[int, int, int, int],
        loop: bool,
    ) -> None:
        self.source, self.split, self.loop = source, split, loop
        self.position = start
        self._samples = self._run(start)

    def __iter__(self) -> ShardStream:
        return self

    def __next__(self) -> RawSample:
        return next(self._samples)

    def _run(self, start: StreamPosition) -> Iterator[RawSample]:
        while True:
            yield from self._epoch(start)
            if not self.loop:
                return
            start = self.position = StreamPosition(epoch=start.epoch + 1)

    def _epoch(self, start: StreamPosition) -> Iterator[RawSample]:
        config = self.source.config
        shards = self.source.shard_order(start.epoch, *self.split)
        replay = StreamPosition(epoch=start.epoch) if config.shuffle_buffer else start
        samples = self._read(shards, replay)
        if config.shuffle_buffer:
            rng = random.Random(f"webdataset:{config.seed}:{start.epoch}:{self.split}")
            samples = shuffle_buffer(samples, config.shuffle_buffer, rng)
        emitted = replay.emitted
        for shard, index, sample in samples:
            emitted += 1
            if emitted > start.emitted:
                self.position = StreamPosition(start.epoch, shard, index + 1, emitted)
                yield sample
        if emitted == 0:
            share = "" if len(shards) == len(self.source.urls) else f" (this reader's: {shards})"
            raise DataError(
                f"webdataset shards {self.source.describe()}{share} hold no sample; "
                "check that they are tar files of samples (warnings above)"
            )

    def _read(
        self, shards: list[str], start: StreamPosition
    ) -> Iterator[tuple[int, int, LazySample]]:
        for shard in range(start.shard, len(shards)):
            skip = start.sample if shard == start.shard else 0
            for index, sample in enumerate(self.source.iter_shard(shards[shard], skip), skip):
                yield shard, index, sample


def shuffle_buffer(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Emit items in a random order drawn from a buffer of ``size`` (webdataset's shuffle)."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        pick = rng.randrange(size)
        buffer[pick], item = item, buffer[pick]
        yield item
    rng.shuffle(buffer)
    yield from buffer
