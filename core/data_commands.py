"""The tools behind ``modaloom data``: `pack_manifest` (``data pack``) and `inspect_url`
(``data inspect``).

`pack_manifest` turns a JSONL manifest into webdataset shards: sample ``i`` is written as
members named by media extension, as webdataset tools expect (``<i:09d>.jpg``, ``.mp4``,
``.wav``: each media file's bytes; a clip's video and audio naming one file share one member),
``<i:09d>.json`` with every other field of the line (text, label, ...; the manifest's key as
``id``), plus ``.txt`` for a string text and ``.cls`` for an integer label. `Packed.fields` is
the mapping that reads them back, e.g.::

    {type: webdataset, urls: "DIR/shard-{000000..000009}.tar",
     fields: {image: jpg;png, text: json.text, label: json.label}}

``webdataset.WebDataset(url).decode("pil")`` reads the same shards.

The ``jsonl`` and ``webdataset`` sources are built through the registry by name, so core
imports no plugin.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from modaloom.core.data import build_sources, process_values
from modaloom.core.errors import DataError, MediaDecodeError
from modaloom.core.interfaces import Processor, Source
from modaloom.core.registry import Registry
from modaloom.core.shards import expand_urls, read_shard, write_shards

SHARD_PREFIX = "shard"


def registered_source(registry: Registry | None, name: str, **fields: Any) -> tuple[Source, Any]:
    """(source, its validated config) of the registered source ``name`` built from ``fields``.

    Args:
        registry: where ``name`` is looked up (the default registry when omitted).
        name: a source type (``jsonl``, ``webdataset``, ...).
        fields: its config fields (``type`` is implied).
    """
    if registry is None:
        from modaloom.core.plugins import default_registry

        registry = default_registry()
    config_model = registry.get("source", name).config
    assert config_model is not None
    config = config_model(**fields)
    return build_sources({name: config}, registry)[name], config


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "m4a", "ogg", "opus", "aac")
MEDIA_EXTENSIONS = frozenset((*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS, *AUDIO_EXTENSIONS))
"""Media file suffixes kept as member names (others are written under the field's name)."""


@dataclass(frozen=True)
class Packed:
    """What `pack_manifest` wrote.

    Attributes:
        shards: the shard paths, in order.
        fields: the ``webdataset`` source's ``fields`` that reads them back, e.g.
            ``{"image": "jpg;png", "text": "json.text"}``.
    """

    shards: list[Path]
    fields: dict[str, str]


def media_members(media: Mapping[str, str]) -> dict[str, str]:
    """Member name of each media field of one sample: the file's extension (``jpg``,
    ``mp4``, ``wav``; ``jpeg`` -> ``jpg``); fields naming the same file share its member (a
    clip's video and audio); a second file with a taken extension gets ``<field>.<ext>``, a
    file without a known media suffix ``<field>``."""
    members: dict[str, str] = {}
    by_path: dict[str, str] = {}
    for name, path in media.items():
        ext = Path(path).suffix.lower().lstrip(".")
        ext = "jpg" if ext == "jpeg" else ext
        if path in by_path:
            members[name] = by_path[path]
            continue
        member = ext if ext in MEDIA_EXTENSIONS else name
        if member in by_path.values():
            member = f"{name}.{ext}" if ext in MEDIA_EXTENSIONS else name
        members[name] = by_path[path] = member
    return members


def _packed(
    source: Source, media_fields: tuple[str, ...], bar: tqdm, seen: dict[str, set[str]]
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(tar key, {member: bytes}) per manifest line; ``seen`` collects each field's members.

    Media go under their extension (`media_members`); every other field goes into
    ``<key>.json`` (with the manifest's key as ``id``), a string ``text`` also into
    ``<key>.txt`` and an integer ``label`` into ``<key>.cls``.
    """
    for index in range(len(source)):
        raw = source[index]
        media = {k: v for k, v in raw.items() if k in media_fields and isinstance(v, str)}
        record: dict[str, Any] = {"id": raw["__key__"]}
        record.update((k, v) for k, v in raw.items() if k != "__key__" and k not in media)
        members: dict[str, bytes] = {}
        for name, member in media_members(media).items():
            seen.setdefault(name, set()).add(member)
            if member in members:
                continue
            try:
                members[member] = Path(media[name]).read_bytes()
            except OSError as exc:
                raise DataError(
                    f"cannot read {name} of sample {raw['__key__']!r}: "
                    f"{exc.strerror or exc} ({media[name]})"
                ) from exc
        for name in record:
            seen.setdefault(name, set()).add(f"json.{name}")
        if isinstance(record.get("text"), str):
            members["txt"] = record["text"].encode("utf-8")
        if isinstance(record.get("label"), int) and not isinstance(record["label"], bool):
            members["cls"] = str(record["label"]).encode("ascii")
        members["json"] = json.dumps(record, ensure_ascii=False).encode("utf-8")
        bar.update(1)
        yield f"{index:09d}", members


def pack_manifest(
    manifest: Path,
    output: Path,
    shard_size: int = 1000,
    progress: bool = True,
    registry: Registry | None = None,
) -> Packed:
    """Write a JSONL manifest's samples into webdataset shards ``output/shard-000000.tar``, ...

    Args:
        manifest: the JSONL manifest (media paths relative to it).
        output: directory of the shards (created).
        shard_size: samples per shard.
        progress: show a tqdm bar.
        registry: where the ``jsonl`` source is found (the default registry when omitted).

    Returns:
        The shard paths and the ``fields`` mapping that reads them back.

    Raises:
        DataError: the manifest is missing or empty, a media file cannot be read, or
            ``shard_size`` is not positive.
    """
    if shard_size < 1:
        raise DataError(f"shard size must be at least 1, got {shard_size}")
    source, config = registered_source(registry, "jsonl", path=str(manifest))
    media_fields: tuple[str, ...] = tuple(config.media_fields)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    seen: dict[str, set[str]] = {}
    with tqdm(total=len(source), desc="pack", unit="sample", disable=not progress) as bar:
        samples = _packed(source, media_fields, bar, seen)
        names = write_shards(output, SHARD_PREFIX, samples, shard_size)
    fields = {name: ";".join(sorted(members)) for name, members in seen.items() if name != "id"}
    return Packed([output / name for name in names], fields)


def _summary(blobs: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Member sizes, and the parsed content of small JSON and text members."""
    out: dict[str, Any] = {"__key__": key, "members": {}}
    for ext, blob in sorted(blobs.items()):
        data = blob if isinstance(blob, bytes) else blob.read(key)
        out["members"][ext] = len(data)
        if ext.rpartition(".")[2] in ("json", "txt", "cls") and len(data) <= 4096:
            try:
                text = data.decode("utf-8")
                out[ext] = json.loads(text) if ext.endswith("json") else text
            except ValueError:
                out[ext] = "<not valid UTF-8 / JSON>"
    return out


def inspect_url(
    url: str,
    limit: int = 3,
    fields: Mapping[str, str] | None = None,
    processors: Mapping[str, Processor] | None = None,
    registry: Registry | None = None,
) -> list[dict[str, Any]]:
    """The first samples of webdataset shards: member sizes, small JSON/text members, and the
    decoded tensor shapes of each field a processor reads (with ``fields`` and ``processors``).

    Args:
        url: a shard URL or brace pattern (any fsspec URL).
        limit: samples to show.
        fields: field -> member mapping as in a ``webdataset`` source spec.
        processors: processors by field name (``video``, ``audio``, ``text``, ...).
        registry: where the ``webdataset`` source is found (the default registry when omitted).

    Returns:
        One dict per sample: ``__key__``, ``members`` ({extension: bytes}), parsed small
        members, and ``shapes`` ({field: {tensor: shape}}) or ``errors`` ({field: reason}).
    """
    results: list[dict[str, Any]] = []
    for shard in expand_urls(url):
        for key, blobs in read_shard(shard):
            results.append(_summary(blobs, key))
            if len(results) >= limit:
                break
        if len(results) >= limit:
            break
    if not results:
        raise DataError(f"webdataset shards {url!r} hold no sample")
    if fields and processors:
        source, _ = registered_source(registry, "webdataset", urls=url, fields=dict(fields))
        for result, sample in zip(results, source.iter_raw()):
            result["shapes"], result["errors"] = _decode_shapes(sample, processors)
    return results


def _decode_shapes(
    sample: Any, processors: Mapping[str, Processor]
) -> tuple[dict[str, dict[str, list[int]]], dict[str, str]]:
    key = str(sample["__key__"])
    shapes: dict[str, dict[str, list[int]]] = {}
    errors: dict[str, str] = {}
    for name, processor in processors.items():
        if name not in sample:
            continue
        try:
            (tensors,) = process_values(processor, [sample[name]], [key], random.Random(0))
        except MediaDecodeError as exc:
            errors[name] = exc.cause
            continue
        shapes[name] = {tensor: list(value.shape) for tensor, value in tensors.items()}
    return shapes, errors
