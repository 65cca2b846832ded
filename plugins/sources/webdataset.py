"""WebDataset tar shards over any fsspec URL (local, ``file://``, ``memory://``, ``http://``, ...).

A shard is a tar file whose consecutive members sharing a key form one sample:
``000017.mp4``, ``000017.json`` -> key ``000017``, members ``mp4`` and ``json`` (the extension is
everything after the first dot of the file name). ``fields`` maps each sample field to a member,
with dotted access into JSON members: ``{video: mp4, audio: mp4, text: json.caption, label: cls}``,
and webdataset's ``;`` alternatives, the first member present being read: ``image: jpg;png;webp``.
Without ``fields``, the img2dataset / video2dataset layout is read (`DEFAULT_FIELDS`:
``NNN.jpg|png|webp`` or ``NNN.mp4``, ``NNN.txt`` caption; image, video and audio optional).

Reading (`modaloom.core.shards.read_shard`). Local and ``memory://`` shards are read by
random access: member data is only read when a field is used, so a DataLoader worker that skips
another worker's samples reads tar headers only. Other protocols are streamed once, front to
back (``http://`` needs no range requests).

Loaders. With ``split_shards: true`` (the default) `TrainStream` reads
`WebDatasetSource.split_stream`: each (rank, worker) reader gets every ``readers``-th shard,
epoch after epoch (each epoch reshuffled with a shuffle buffer), and resumes after a count of
its samples (`WebDatasetSource.split_position` counts shard samples from tar headers). With
``split_shards: false`` it reads `WebDatasetSource.iter_raw` (one epoch, every sample, the
epoch-0 shuffle; every worker reads everything and decodes its own share).
`WebDatasetSource.stream` returns a `ShardStream` whose `position` (epoch, shard, sample,
emitted) can be saved and passed back as ``start`` to resume without repeats or gaps.

Corrupt samples. Fields are parsed lazily; a field that cannot be read (invalid JSON, a missing
member or JSON key, a bad label) raises `MediaDecodeError` when the data layer reads it, so
`SampleDecoder` skips the sample and reports it in ``__skipped__`` (counted in metrics.jsonl).
A truncated shard ends with a logged warning; the partial last sample is dropped.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Collection, Iterator
from functools import partial
from typing import Any, Literal

from pydantic import Field, model_validator

from modaloom.core.errors import DataError, MediaDecodeError, SpecProblems
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import RawSample, Source, text_strings
from modaloom.core.registry import Registry
from modaloom.core.shards import Blob, MemberRef, expand_urls, open_shard, read_shard
from modaloom.core.spec_models import Seed, SourceSpec
from modaloom.plugins.sources.shard_stream import ShardStream, StreamPosition

log = logging.getLogger(__name__)

TEXT_EXTENSIONS = frozenset({"txt", "text", "cls", "caption", "cls2"})
"""Member extensions decoded to ``str`` (UTF-8) rather than kept as bytes."""


DEFAULT_FIELDS = {
    "image": "jpg;jpeg;png;webp",
    "video": "mp4;webm;mkv;avi;mov",
    "audio": "wav;flac;mp3;m4a;ogg;opus",
    "text": "txt",
}
"""``fields`` when a spec gives none: img2dataset / video2dataset shards (``NNN.jpg|png|webp``
or ``NNN.mp4``, the caption in ``NNN.txt``, metadata in ``NNN.json``)."""
DEFAULT_OPTIONAL = ["image", "video", "audio"]
"""``optional_fields`` with `DEFAULT_FIELDS` (a sample holds one of them)."""


class WebDatasetSpec(SourceSpec):
    """WebDataset tar shards, e.g. ``urls: s3://bucket/train-{000000..000099}.tar``."""

    type: Literal["webdataset"] = "webdataset"
    urls: str | list[str]
    """Shard URLs; each is brace-expanded (``shards/train-{000000..000009}.tar``)."""
    fields: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_FIELDS), min_length=1)
    """Sample field -> shard member, with dotted access into JSON (``text: json.caption``) and
    ``;`` alternatives (``image: jpg;png;webp``: the first present). Default: img2dataset /
    video2dataset shards, ``{image: jpg;jpeg;png;webp, video: mp4;webm;mkv;avi;mov,
    audio: wav;flac;mp3;m4a;ogg;opus, text: txt}`` with image, video and audio optional."""
    optional_fields: list[str] = []
    """Fields whose member may be absent from a sample (the sample then lacks that field)."""
    shuffle_buffer: int = Field(0, ge=0)
    """Samples held in a shuffle buffer (0: storage order); shards are then shuffled too."""
    seed: Seed = 0
    """Seed of the shard and buffer shuffles (the order is a function of seed and epoch)."""
    on_missing: Literal["skip", "raise"] = "skip"
    """A sample lacking a required field: skip it (counted like a corrupt sample) or stop."""
    split_shards: bool = True
    """Each process and DataLoader worker reads only its own shards (like webdataset's
    split_by_node and split_by_worker; needs at least processes x data.num_workers shards), so
    the stream depends on data.num_workers. ``false``: every reader reads every shard and
    decodes only its share, which works with fewer shards than readers."""

    @model_validator(mode="before")
    @classmethod
    def _default_fields(cls, data: Any) -> Any:
        """No ``fields`` (so `DEFAULT_FIELDS`): ``optional_fields`` is `DEFAULT_OPTIONAL`
        unless given."""
        if isinstance(data, dict) and "fields" not in data and "optional_fields" not in data:
            return {**data, "optional_fields": list(DEFAULT_OPTIONAL)}
        return data

    @model_validator(mode="after")
    def _check_fields(self) -> WebDatasetSpec:
        unknown = sorted(set(self.optional_fields) - set(self.fields))
        if unknown:
            raise ValueError(f"optional_fields {unknown} are not in fields {sorted(self.fields)}")
        for name, member in self.fields.items():
            if not all(part for option in member.split(";") for part in option.split(".")):
                raise ValueError(
                    f"fields.{name} is {member!r}; write a member like json.caption, or "
                    "alternatives like jpg;png"
                )
        try:
            expand_urls(self.urls)
        except DataError as exc:
            raise SpecProblems([("urls", str(exc))]) from None
        return self


# ------------------------------------------------------------------------------ lazy samples


class _Pending:
    """A field value computed on first access."""

    __slots__ = ("resolve",)

    def __init__(self, resolve: Callable[[], Any]) -> None:
        self.resolve = resolve


class LazySample(dict[str, Any]):
    """A raw sample whose fields are read and parsed on first access.

    Reading a broken field raises `MediaDecodeError`; `resolved` (or ``dict(sample)``) gives a
    plain dict with every field read.
    """

    def __getitem__(self, name: str) -> Any:
        value = super().__getitem__(name)
        if isinstance(value, _Pending):
            value = value.resolve()
            super().__setitem__(name, value)
        return value

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[name]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:  # makes dict(sample) go through __getitem__
        return iter(list(self.keys()))

    def resolved(self) -> dict[str, Any]:
        """Every field read and parsed (raises `MediaDecodeError` for a broken one)."""
        return {name: self[name] for name in list(self.keys())}

    def items(self) -> Any:
        return self.resolved().items()

    def values(self) -> Any:
        return self.resolved().values()


def _step(value: Any, part: str) -> Any:
    """One dotted-path step into parsed JSON (``LookupError`` when absent)."""
    if isinstance(value, dict):
        return value[part]
    if isinstance(value, list) and part.isdigit():
        return value[int(part)]
    raise KeyError(part)


def member_candidates(spec: str) -> list[tuple[str, list[str]]]:
    """``(member extension, JSON path)`` readings of a field's member spec, in the order they
    are tried: each ``;`` alternative in turn, its longest extension first.

    ``"json.caption;txt"`` -> ``[("json.caption", []), ("json", ["caption"]), ("txt", [])]``.
    """
    candidates = []
    for option in spec.split(";"):
        parts = option.split(".")
        candidates += [(".".join(parts[:n]).lower(), parts[n:]) for n in range(len(parts), 0, -1)]
    return candidates


def convert(name: str, ext: str, value: Any) -> Any:
    """Type a field value: ``label`` -> int, text members -> str, other members stay bytes."""
    if name == "label":
        if isinstance(value, bytes):
            value = value.decode("utf-8").strip()
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise TypeError(f"a label must be an integer, got {type(value).__name__}")
        return int(value)
    if isinstance(value, bytes) and ext.rpartition(".")[2] in TEXT_EXTENSIONS:
        return value.decode("utf-8")
    return value


class WebDatasetSource(Source):
    """Streaming source over webdataset tar shards (see the module docstring)."""

    def __init__(self, config: WebDatasetSpec) -> None:
        self.config = config
        self.urls = expand_urls(config.urls)
        if not self.urls:
            raise DataError(f"webdataset source has an empty shard list (urls: {config.urls!r})")
        open_shard(self.urls[0])[3].close()  # fail early, in the main process, when unreachable
        # field -> [(member extension, json path)]: alternatives in order, longest extension first
        self.candidates = {name: member_candidates(spec) for name, spec in config.fields.items()}
        self._counts: dict[str, int] = {}

    def describe(self) -> str:
        """The shard list for messages: the URL, or the first one and a count."""
        more = f" and {len(self.urls) - 1} more" if len(self.urls) > 1 else ""
        return f"{self.urls[0]!r}{more}"

    def shards(self) -> list[str]:
        """Every shard URL, in spec order."""
        return list(self.urls)

    def shard_order(
        self, epoch: int = 0, rank: int = 0, world: int = 1, worker: int = 0, workers: int = 1
    ) -> list[str]:
        """The shards one reader reads in ``epoch``: shuffled (with a shuffle buffer), then
        every ``world * workers``-th one from ``rank * workers + worker``.

        Raises:
            DataError: fewer shards than readers.
        """
        order = self.shards()
        if self.config.shuffle_buffer:
            random.Random(f"webdataset-shards:{self.config.seed}:{epoch}").shuffle(order)
        readers = world * workers
        if readers > 1 and len(order) < readers:
            raise DataError(
                f"{len(order)} webdataset shard(s) cannot be split among {readers} "
                f"readers ({world} ranks x {workers} workers); write more shards"
            )
        return order[rank * workers + worker :: readers]

    def iter_shard(self, url: str, skip: int = 0) -> Iterator[LazySample]:
        """The samples of one shard, fields unread until used."""
        wanted = {ext for options in self.candidates.values() for ext, _ in options}
        for key, blobs in read_shard(url, wanted, skip):
            yield self._sample(url, key, blobs)

    def _sample(
        self, url: str, key: str, blobs: dict[str, Blob], names: Collection[str] | None = None
    ) -> LazySample:
        sample = LazySample({"__key__": key, "__url__": url})
        cache: dict[str, Any] = {}
        for name, options in self.candidates.items():
            if names is not None and name not in names:
                continue
            found = [(ext, path) for ext, path in options if ext in blobs]
            if found:
                sample[name] = _Pending(partial(self._resolve, key, name, *found[0], blobs, cache))
                continue
            if name in self.config.optional_fields:
                continue
            reason = (
                f"no member {self.config.fields[name]!r} for field {name!r} "
                f"(members: {', '.join(sorted(blobs)) or 'none'})"
            )
            if self.config.on_missing == "raise":
                raise DataError(f"sample {key!r} of {url}: {reason} (on_missing: raise)")
            sample[name] = _Pending(partial(_fail, key, reason))
        return sample

    def _resolve(
        self,
        key: str,
        name: str,
        ext: str,
        path: list[str],
        blobs: dict[str, Blob],
        cache: dict[str, Any],
    ) -> Any:
        try:
            if ext not in cache:
                blob = blobs[ext]
                cache[ext] = blob.read(key) if isinstance(blob, MemberRef) else blob
            value = cache[ext]
            if path or ext.rpartition(".")[2] == "json":
                if "json:" + ext not in cache:
                    cache["json:" + ext] = json.loads(value)
                value = cache["json:" + ext]
            for part in path:
                value = _step(value, part)
            return convert(name, ext, value)
        except LookupError:
            reason = f"member {ext!r} has no {'.'.join(path)!r} for field {name!r}"
            if self.config.on_missing == "raise":
                raise DataError(f"sample {key!r}: {reason} (on_missing: raise)") from None
            raise MediaDecodeError(key, reason) from None
        except (ValueError, TypeError) as exc:
            reason = f"invalid {ext!r} member for field {name!r} ({exc})"
            raise MediaDecodeError(key, reason) from None

    def stream(
        self,
        start: StreamPosition | None = None,
        *,
        rank: int = 0,
        world: int = 1,
        worker: int = 0,
        workers: int = 1,
        loop: bool = False,
    ) -> ShardStream:
        """Samples of this reader's shards from ``start``; ``loop`` runs epoch after epoch."""
        return ShardStream(self, start or StreamPosition(), (rank, world, worker, workers), loop)

    def iter_raw(
        self, *, epoch: int = 0, rank: int = 0, world: int = 1, worker: int = 0, workers: int = 1
    ) -> Iterator[RawSample]:
        """One epoch of samples (every shard unless a split is given)."""
        return self.stream(
            StreamPosition(epoch=epoch), rank=rank, world=world, worker=worker, workers=workers
        )

    def split_stream(self, reader: int, readers: int, skip: int = 0) -> ShardStream | None:
        """Every ``readers``-th shard from ``reader``, epoch after epoch, past ``skip`` samples
        (``None`` with ``split_shards: false``).

        Raises:
            DataError: fewer shards than readers.
        """
        if not self.config.split_shards:
            return None
        if len(self.urls) < readers:
            raise DataError(
                f"{len(self.urls)} webdataset shard(s) ({self.describe()}) cannot be split among "
                f"{readers} readers (processes x data.num_workers) with split_shards: true; "
                f"write at least {readers} shards, or set split_shards: false (every reader "
                "then reads every shard) or use fewer data.num_workers"
            )
        start = self.split_position(reader, readers, skip) if skip else None
        return self.stream(start, rank=reader, world=readers, loop=True)

    def split_position(self, reader: int, readers: int, skip: int) -> StreamPosition:
        """Where a reader's `split_stream` is after ``skip`` samples; counts the samples of
        shards from their tar headers (once per shard; remote shards are streamed through),
        so whole shards and, without a shuffle buffer, whole epochs are passed over."""
        epoch = 0
        while True:
            emitted = 0
            for index, url in enumerate(self.shard_order(epoch, reader, readers)):
                count = self.sample_count(url)
                if skip < emitted + count:
                    if self.config.shuffle_buffer:  # the stream replays the epoch's buffer
                        return StreamPosition(epoch, emitted=skip)
                    return StreamPosition(epoch, index, skip - emitted, skip)
                emitted += count
            if emitted == 0:
                return StreamPosition(epoch)  # the stream reports the empty shards
            if self.config.shuffle_buffer:  # each epoch reads other shards
                epoch, skip = epoch + 1, skip - emitted
            else:  # every epoch reads the same shards
                epoch, skip = epoch + skip // emitted, skip % emitted

    def sample_count(self, url: str) -> int:
        """Samples in one shard, from its tar headers (remembered)."""
        if url not in self._counts:
            self._counts[url] = sum(1 for _ in read_shard(url, ()))
        return self._counts[url]

    def texts(self, limit: int | None = None) -> Iterator[str]:
        """Captions of every shard; reads only the text field's member."""
        if "text" not in self.candidates:
            return
        wanted = {ext for ext, _ in self.candidates["text"]}
        count = 0
        for url in self.urls:
            for key, blobs in read_shard(url, wanted):
                try:
                    value = self._sample(url, key, blobs, ("text",)).get("text")
                except (MediaDecodeError, DataError):
                    continue
                for text in text_strings(value):
                    if limit is not None and count >= limit:
                        return
                    count += 1
                    yield text


def _fail(key: str, reason: str) -> Any:
    raise MediaDecodeError(key, reason)


def make_webdataset_source(config: WebDatasetSpec) -> WebDatasetSource:
    """Registry factory of the ``webdataset`` source."""
    return WebDatasetSource(config)


@hookimpl
def modaloom_register_sources(registry: Registry) -> None:
    """Register the webdataset source."""
    registry.add_source(
        make_webdataset_source,
        WebDatasetSpec,
        description="WebDataset tar shards over any fsspec URL (file, memory, http, s3)",
    )
