"""Data plumbing: build sources and processors, decode samples, raw values to batches, and the
evaluation stream.

The training stream (plan, stream and loader) is in `modaloom.core.stream`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch.utils.data import IterableDataset, get_worker_info

from modaloom.core.compose import default_inputs
from modaloom.core.errors import MediaDecodeError, decoding
from modaloom.core.interfaces import (
    Batch,
    DataContext,
    PretrainedInput,
    Processor,
    RawSample,
    Source,
)
from modaloom.core.registry import Registry
from modaloom.core.spec_models import DataSpec, ModelSpec, SourceSpec

log = logging.getLogger(__name__)

RESERVED_FIELDS = ("__key__", "label")


def build_sources(specs: Mapping[str, SourceSpec], registry: Registry) -> dict[str, Source]:
    """Instantiate ``data.sources`` (or ``data.eval_sources``) by name."""
    sources = {}
    for name, spec in specs.items():
        sources[name] = registry.source_factory(spec.type)(spec)
    return sources


def pretrained_inputs(model: ModelSpec, registry: Registry) -> dict[str, PretrainedInput]:
    """Per batch field, the first component (in spec order) that reads it and has a
    ``pretrained`` checkpoint."""
    found: dict[str, PretrainedInput] = {}
    for name, spec in model.components.items():
        checkpoint = getattr(spec, "pretrained", None)
        if isinstance(checkpoint, str):
            for field_name in default_inputs(registry, spec):
                found.setdefault(field_name, PretrainedInput(name, checkpoint))
    return found


def build_processors(
    data_spec: DataSpec,
    registry: Registry,
    sources: Mapping[str, Source],
    artifact_dir: Path | None = None,
    model: ModelSpec | None = None,
) -> dict[str, Processor]:
    """One processor per registered modality, configured from ``data.<modality>``; with
    ``model``, what the data spec leaves unset comes from the checkpoints of its ``pretrained``
    components (`DataContext.pretrained`)."""

    def texts() -> Iterator[str]:
        for source in sources.values():
            yield from source.texts()

    pretrained = {} if model is None else pretrained_inputs(model, registry)
    ctx = DataContext(artifact_dir=artifact_dir, texts=texts, pretrained=pretrained)
    processors = {}
    for component in registry.of_kind("modality"):
        factory = registry.processor_factory(component.name)
        processors[component.name] = factory(data_spec.modality(component.name), ctx)
    return processors


def process_values(
    processor: Processor, values: Sequence[Any], keys: Sequence[str], rng: random.Random
) -> list[dict[str, Any]]:
    """Raw values of one field (as a source yields them) through its processor, without
    augmentation (``train=False``); ``keys`` name the values in `MediaDecodeError` messages.

    Raises:
        MediaDecodeError: a value cannot be decoded.
    """
    return [
        processor.process(value, key=key, train=False, rng=rng)
        for value, key in zip(values, keys, strict=True)
    ]


def batch_from_values(
    processors: Mapping[str, Processor],
    values: Mapping[str, Sequence[Any]],
    rng: random.Random | None = None,
    keys: Sequence[str] | None = None,
    device: torch.device | None = None,
) -> Batch:
    """A `Batch` of raw values: each field's values processed (no augmentation) and collated.

    Args:
        processors: processors by field.
        values: per field, one raw value per sample (strings for text, bytes or paths for
            media); every field has the same number of samples.
        rng: shared by every processor call; ``random.Random(0)`` when omitted.
        keys: sample keys (``__keys__``, and the processors' error keys); when omitted the
            values are named ``<field><i>`` and ``__keys__`` is empty.
        device: where to put the tensors (left on the CPU when omitted).
    """
    rng = random.Random(0) if rng is None else rng
    batch: Batch = {"__keys__": list(keys or []), "__meta__": []}
    for field_name, column in values.items():
        names = keys if keys is not None else [f"{field_name}{i}" for i in range(len(column))]
        processor = processors[field_name]
        batch[field_name] = processor.collate(list(process_values(processor, column, names, rng)))
    return batch if device is None else send_to_device(batch, device)  # type: ignore[no-any-return]


@dataclass
class SampleDecoder:
    """Decodes raw samples with the processors and collates them, skipping corrupt ones."""

    processors: Mapping[str, Processor]
    train: bool
    on_error: str = "skip"
    cache_media: bool = False
    """Decode each media field once, without random augmentation, and keep it in memory (per
    worker); text is still processed every time. For small data sets such as digits-av."""
    _cache: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict, repr=False)

    def process(self, name: str, value: Any, key: str, rng: random.Random) -> dict[str, Any]:
        """One field through its processor, or from the media cache.

        Raises:
            MediaDecodeError: for anything the processor raises (built-in processors raise
                nothing else; a plugin's may), but not `MemoryError`, `KeyboardInterrupt`, ...
        """
        processor = self.processors[name]
        with decoding(key):
            if not self.cache_media or name == "text":
                return processor.process(value, key=key, train=self.train, rng=rng)
            fingerprint = hash(value) if isinstance(value, bytes | str) else id(value)
            entry = (name, key, fingerprint)
            if entry not in self._cache:
                self._cache[entry] = processor.process(value, key=key, train=False, rng=rng)
            return self._cache[entry]

    def decode(self, raw: RawSample, rng: random.Random) -> dict[str, Any]:
        """All modality fields of one sample (raises `MediaDecodeError`)."""
        key = str(raw.get("__key__", "?"))
        meta = {k: v for k, v in raw.items() if not isinstance(v, bytes | bytearray)}
        out: dict[str, Any] = {"__key__": key, "label": raw.get("label"), "__meta__": meta}
        for name, value in raw.items():
            if name in RESERVED_FIELDS or name not in self.processors:
                continue
            out[name] = self.process(name, value, key, rng)
        if len(out) == 3:
            raise MediaDecodeError(key, f"no field any processor reads (fields: {sorted(raw)})")
        return out

    def decode_many(self, raws: Sequence[tuple[RawSample, random.Random]]) -> tuple[list, list]:
        """Decode samples; returns (decoded, [(key, reason) of skipped])."""
        decoded, skipped = [], []
        for raw, rng in raws:
            try:
                decoded.append(self.decode(raw, rng))
            except MediaDecodeError as exc:
                if self.on_error == "raise":
                    raise
                skipped.append((exc.key, exc.cause))
        return decoded, skipped

    def collate(self, decoded: list[dict[str, Any]], skipped: list[tuple[str, str]]) -> Batch:
        """Stack decoded samples into a `Batch` (see core.interfaces for the layout)."""
        batch: Batch = {
            "__keys__": [d["__key__"] for d in decoded],
            "__meta__": [d["__meta__"] for d in decoded],
            "__skipped__": skipped,
        }
        fields = {name for d in decoded for name in d if name in self.processors}
        for name in sorted(fields):
            batch[name] = self.processors[name].collate([d.get(name) for d in decoded])
        labels = [d.get("label") for d in decoded]
        if any(label is not None for label in labels):
            batch["labels"] = torch.tensor([-1 if v is None else int(v) for v in labels])
        return batch


def iterate_source(source: Source) -> Iterator[RawSample]:
    """Every sample of a source once, in order (map-style by index, others by iteration)."""
    if source.is_map_style:
        for index in range(len(source)):
            yield source[index]
    else:
        yield from source.iter_raw()


class EvalStream(IterableDataset):
    """Every sample once, in order, without augmentation; rank r takes batches b % world == r.

    Each batch carries its position in the source's batch order as ``__index__`` (int), so
    results computed on different ranks can be put back in order (`gather_in_order`).
    """

    def __init__(
        self, source: Source, decoder: SampleDecoder, batch_size: int, rank: int = 0, world: int = 1
    ) -> None:
        self.source, self.decoder, self.batch_size = source, decoder, batch_size
        self.rank, self.world = rank, world

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        pending: list[RawSample] = []
        index = 0
        for raw in iterate_source(self.source):
            pending.append(raw)
            if len(pending) == self.batch_size:
                yield from self._emit(index, pending, worker, workers)
                index, pending = index + 1, []
        if pending:
            yield from self._emit(index, pending, worker, workers)

    def _emit(
        self, index: int, raws: list[RawSample], worker: int, workers: int
    ) -> Iterator[Batch]:
        if index % self.world != self.rank or (index // self.world) % workers != worker:
            return
        rngs = [random.Random(f"eval:{index}:{i}") for i in range(len(raws))]
        decoded, skipped = self.decoder.decode_many(list(zip(raws, rngs)))
        for key, reason in skipped:
            log.warning("skipped sample %s: %s", key, reason)
        if decoded:
            batch = self.decoder.collate(decoded, skipped)
            batch["__index__"] = index
            yield batch


def send_tensors_by_name(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: this worker sends tensors through named shared memory.

    torch's default (``file_descriptor``) passes one file descriptor per tensor, each over a new
    authenticated socket connection to the worker; a digits-av micro-batch holds 8 tensors, and
    on 2 cores those round trips cost 2 workers about 7% of their samples per second (measured
    with ``benchmarks/loader.py``). ``file_system`` names each block instead (torch's
    ``torch_shm_manager`` removes the blocks when the processes end). Set in the worker only:
    the main process, and any other DataLoader of the user's, keeps its own strategy.
    """
    torch.multiprocessing.set_sharing_strategy("file_system")
