"""Webdataset shard files: reading (`read_shard`) and writing (`write_shards`) tar shards.

Reading: local and ``memory://`` shards are read by random access and member data is only read
when used (`MemberRef`); other protocols are streamed once, front to back (``http://`` needs no
range requests). A shard that is not a tar file, is empty or is truncated ends early with a
logged warning; a shard that cannot be opened is a `DataError`.

The ``webdataset`` source reads shards with these functions; ``modaloom data pack`` writes them
(`modaloom.core.data_commands`).
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import webdataset as wds
from braceexpand import braceexpand

from modaloom.core.errors import DataError, MediaDecodeError

log = logging.getLogger(__name__)

RANDOM_ACCESS_PROTOCOLS = frozenset({"file", "local", "memory"})
MAX_SHARDS = 1_000_000
"""Most shard URLs one pattern may expand to."""
_BRACE_GROUP = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")
_BLOCK = tarfile.BLOCKSIZE


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace-expand one URL pattern or a list of them into the shard list.

    Raises:
        DataError: a pattern's braces are unbalanced, or it expands to more than `MAX_SHARDS`
            URLs (braceexpand builds each range in memory).
    """
    patterns = [urls] if isinstance(urls, str) else list(urls)
    expanded: list[str] = []
    for pattern in patterns:
        if _expansion_bound(pattern) > MAX_SHARDS:
            raise DataError(f"{pattern!r} expands to more than {MAX_SHARDS:,} shards")
        try:
            expanded += [url for url in braceexpand(pattern) if url.strip()]
        except ValueError:  # braceexpand.UnbalancedBracesError
            raise DataError(
                f"{pattern!r} has unbalanced braces; write a range like "
                "shard-{000000..000009}.tar"
            ) from None
    return expanded


def _expansion_bound(pattern: str) -> int:
    """An upper bound of the URLs a pattern expands to (its innermost brace groups)."""
    bound = 1
    for group in _BRACE_GROUP.findall(pattern):
        numbers = _RANGE.fullmatch(group)
        if numbers is not None:
            first, last, step = numbers.groups()
            bound *= abs(int(last) - int(first)) // max(1, abs(int(step or 1))) + 1
        else:
            bound *= group.count(",") + 1
    return bound


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

    Written with ``webdataset.TarWriter`` (members ``key.ext``, in extension order, mode 0644,
    time 0, so the same samples give the same bytes); name members by media extension (``jpg``,
    ``mp4``, ``wav``, ``txt``, ``json``, ``cls``) and webdataset's own ``decode`` reads them.

    Returns:
        The shard file names.
    """
    names: list[str] = []
    pending: list[tuple[str, dict[str, bytes]]] = []

    def flush() -> None:
        name = f"{prefix}-{len(names):06d}.tar"
        temporary = root / f".{name}.{os.getpid()}.tmp"
        with (
            temporary.open("wb") as handle,
            wds.TarWriter(
                handle, user="modaloom", group="modaloom", mode=0o644, encoder=False, mtime=0
            ) as tar,
        ):
            for key, members in pending:
                tar.write({"__key__": key, **members})
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
