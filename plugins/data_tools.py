"""Webdataset shard files (tar reading and writing) and the tools behind ``modaloom data``.

Reading (`read_shard`): local and ``memory://`` shards are read by random access and member data
is only read when used (`MemberRef`); other protocols are streamed once, front to back
(``http://`` needs no range requests). A shard that is not a tar file, is empty or is truncated
ends early with a logged warning; a shard that cannot be opened is a `DataError`.

`pack_manifest` (``modaloom data pack``) turns a JSONL manifest into shards: sample ``i`` is
written as ``<i:09d>.<field>`` members holding each media file's bytes (the processors detect
the format from the bytes) plus ``<i:09d>.json`` with every other field of the line (text,
label, ...; the manifest's key as ``id``). Read them back with::

    {type: webdataset, urls: "DIR/shard-{000000..000009}.tar",
     fields: {image: image, text: json.text, label: json.label}}

`inspect_url` (``modaloom data inspect``) shows the first samples of shards.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import tarfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from braceexpand import braceexpand
from tqdm.auto import tqdm

from modaloom.core.errors import DataError, MediaDecodeError
from modaloom.core.interfaces import Processor
from modaloom.plugins.manifest import MEDIA_FIELDS, JsonlSource, JsonlSpec

log = logging.getLogger(__name__)

RANDOM_ACCESS_PROTOCOLS = frozenset({"file", "local", "memory"})
_BLOCK = tarfile.BLOCKSIZE


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace-expand one URL pattern or a list of them into the shard list."""
    patterns = [urls] if isinstance(urls, str) else list(urls)
    return [url for pattern in patterns for url in braceexpand(pattern) if url.strip()]


@dataclass(frozen=True)
class MemberRef:
    """A tar member's data in a random-access file, read when needed."""

    fs: Any
    path: str
    offset: int
    size: int

    def read(self, key: str) -> bytes:
        """The member's bytes (`MediaDecodeError` when the file is now shorter)."""
        with self.fs.open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data: bytes = handle.read(self.size)
        if len(data) != self.size:
            raise MediaDecodeError(key, f"member data truncated ({len(data)} of {self.size} bytes)")
        return data


Blob = bytes | MemberRef


def split_name(name: str) -> tuple[str, str]:
    """``dir/000017.seg.json`` -> (``dir/000017``, ``seg.json``); extensions are lowercased."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def open_shard(url: str) -> tuple[Any, str, bool, Any]:
    """(filesystem, path, random access?, open binary file) of a shard.

    Raises:
        DataError: the shard is missing or unreachable, or its protocol is unknown.
    """
    try:
        fs, path = fsspec.core.url_to_fs(url)
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        random_access = bool(protocols & RANDOM_ACCESS_PROTOCOLS)
        options = {"block_size": 0} if protocols & {"http", "https"} else {}
        return fs, path, random_access, fs.open(path, "rb", **options)
    except FileNotFoundError as exc:
        raise DataError(f"cannot open webdataset shard {url!r}: not found or unreachable") from exc
    except (OSError, ValueError, ImportError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise DataError(f"cannot open webdataset shard {url!r}: {reason}") from exc


def _open_tar(handle: Any, random_access: bool, url: str) -> tarfile.TarFile | None:
    try:
        return tarfile.open(fileobj=handle, mode="r:" if random_access else "r|")
    except (tarfile.TarError, EOFError, OSError) as exc:
        log.warning("skipping webdataset shard %s: not a readable tar file (%s)", url, exc)
        return None


def read_shard(
    url: str, wanted: Collection[str] | None = None, skip: int = 0
) -> Iterator[tuple[str, dict[str, Blob]]]:
    """The samples of one shard as ``(key, {extension: data})``, in storage order.

    Consecutive members sharing a key form a sample (``a/17.seg.json``: key ``a/17``,
    extension ``seg.json``).

    Args:
        url: the shard.
        wanted: extensions to keep (all when ``None``); others are never read.
        skip: samples to pass over first (their data is not read).

    Raises:
        DataError: the shard cannot be opened.
    """
    fs, path, random_access, handle = open_shard(url)
    with handle:
        tar = _open_tar(handle, random_access, url)
        if tar is None:
            return

        def data(info: tarfile.TarInfo) -> Blob:
            if random_access:
                return MemberRef(fs, path, info.offset_data, info.size)
            return tar.extractfile(info).read()  # type: ignore[union-attr]

        yield from _group_members(tar, url, data, wanted, skip)


def _group_members(
    tar: tarfile.TarFile, url: str, data: Any, wanted: Collection[str] | None, skip: int
) -> Iterator[tuple[str, dict[str, Blob]]]:
    key: str | None = None
    blobs: dict[str, Blob] = {}
    index = 0
    try:
        while (info := tar.next()) is not None:
            tar.members.clear()  # type: ignore[attr-defined]  # keep memory flat
            if not info.isfile():
                continue
            name, ext = split_name(info.name)
            if name != key:
                if key is not None and index >= skip:
                    yield key, blobs
                index, key, blobs = index + (key is not None), name, {}
            if index >= skip and (wanted is None or ext in wanted):
                blobs[ext] = data(info)
        tail = tar.fileobj.read(_BLOCK)  # type: ignore[union-attr]
    except (tarfile.TarError, EOFError, OSError) as exc:
        log.warning(
            "webdataset shard %s is truncated or corrupt after %d samples (%s); "
            "dropping its last sample",
            url,
            index,
            exc,
        )
        return
    if key is not None and index >= skip:
        yield key, blobs
    if tail != bytes(_BLOCK):
        log.warning(
            "webdataset shard %s has no end-of-archive marker: it may be truncated "
            "(its last sample may lack members)",
            url,
        )


SHARD_PREFIX = "shard"


def write_shards(
    root: Path, prefix: str, samples: Iterable[tuple[str, dict[str, bytes]]], shard_size: int = 1000
) -> list[str]:
    """Write ``(key, {ext: data})`` samples into ``prefix-000000.tar``, ... (each atomically).

    Returns:
        The shard file names.
    """
    names: list[str] = []
    pending: list[tuple[str, dict[str, bytes]]] = []

    def flush() -> None:
        name = f"{prefix}-{len(names):06d}.tar"
        temporary = root / f".{name}.{os.getpid()}.tmp"
        with tarfile.open(temporary, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in pending:
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        os.replace(temporary, root / name)
        names.append(name)
        pending.clear()

    for sample in samples:
        pending.append(sample)
        if len(pending) == shard_size:
            flush()
    if pending or not names:
        flush()
    return names


def _packed(source: JsonlSource, bar: tqdm) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(tar key, {member: bytes}) per manifest line."""
    for index in range(len(source)):
        raw = source[index]
        members: dict[str, bytes] = {}
        record: dict[str, Any] = {"id": raw["__key__"]}
        for name, value in raw.items():
            if name == "__key__":
                continue
            if name in MEDIA_FIELDS and isinstance(value, str):
                try:
                    members[name] = Path(value).read_bytes()
                except OSError as exc:
                    raise DataError(
                        f"cannot read {name} of sample {raw['__key__']!r}: "
                        f"{exc.strerror or exc} ({value})"
                    ) from exc
            else:
                record[name] = value
        members["json"] = json.dumps(record, ensure_ascii=False).encode("utf-8")
        bar.update(1)
        yield f"{index:09d}", members


def pack_manifest(
    manifest: Path, output: Path, shard_size: int = 1000, progress: bool = True
) -> list[Path]:
    """Write a JSONL manifest's samples into webdataset shards ``output/shard-000000.tar``, ...

    Args:
        manifest: the JSONL manifest (media paths relative to it).
        output: directory of the shards (created).
        shard_size: samples per shard.
        progress: show a tqdm bar.

    Returns:
        The shard paths, in order.

    Raises:
        DataError: the manifest is missing or empty, a media file cannot be read, or
            ``shard_size`` is not positive.
    """
    if shard_size < 1:
        raise DataError(f"shard size must be at least 1, got {shard_size}")
    source = JsonlSource(JsonlSpec(path=str(manifest)))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(source), desc="pack", unit="sample", disable=not progress) as bar:
        names = write_shards(output, SHARD_PREFIX, _packed(source, bar), shard_size)
    return [output / name for name in names]


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
) -> list[dict[str, Any]]:
    """The first samples of webdataset shards: member sizes, small JSON/text members, and the
    decoded tensor shapes of each field a processor reads (with ``fields`` and ``processors``).

    Args:
        url: a shard URL or brace pattern (any fsspec URL).
        limit: samples to show.
        fields: field -> member mapping as in a ``webdataset`` source spec.
        processors: processors by field name (``video``, ``audio``, ``text``, ...).

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
        # imported here: webdataset_source builds on this module's shard reading
        from modaloom.plugins.webdataset_source import WebDatasetSource, WebDatasetSpec

        source = WebDatasetSource(WebDatasetSpec(urls=url, fields=dict(fields)))
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
            tensors = processor.process(sample[name], key=key, train=False, rng=random.Random(0))
        except MediaDecodeError as exc:
            errors[name] = exc.cause
            continue
        shapes[name] = {tensor: list(value.shape) for tensor, value in tensors.items()}
    return shapes, errors
