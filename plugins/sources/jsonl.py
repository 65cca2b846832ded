"""JSONL manifest source: one JSON object per line, media paths relative to the manifest."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from modaloom.core.errors import DataError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import RawSample, Source
from modaloom.core.registry import Registry
from modaloom.core.spec_models import SourceSpec

log = logging.getLogger(__name__)

MEDIA_FIELDS = ("image", "video", "audio")


class JsonlSpec(SourceSpec):
    """A JSONL manifest such as ``{"image": "img/1.jpg", "text": "a dog"}`` per line."""

    type: Literal["jsonl"] = "jsonl"
    path: str
    """The manifest file; relative media paths are resolved against its directory."""
    media_fields: tuple[str, ...] = MEDIA_FIELDS
    """Fields holding media paths (read from disk by the processors)."""
    key_field: str | None = "id"
    """Field used as the sample key when present; the line number otherwise."""
    fields: dict[str, str] = {}
    """Sample fields read from another manifest field, ``{sample field: manifest field}``:
    ``{audio: video}`` decodes each line's audio track from its ``video`` file (MSR-VTT's mp4s,
    as a webdataset source's ``fields: {video: mp4, audio: mp4}`` does). A mapped field replaces
    one of the same name in the line; lines without the manifest field lack the sample field."""


class JsonlSource(Source):
    """Map-style source over a JSONL manifest (lines are parsed once, at construction)."""

    def __init__(self, config: JsonlSpec) -> None:
        self.config = config
        path = Path(config.path).expanduser()
        if not path.is_file():
            raise DataError(f"manifest {config.path!r} does not exist; check data.sources.*.path")
        self.root = path.resolve().parent
        self.samples: list[RawSample] = []
        self.invalid_lines = 0
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"manifest {config.path!r} line {number} is not UTF-8 (byte "
                    f"0x{raw[exc.start]:02x} at column {exc.start + 1}); save the file as UTF-8"
                ) from None
            if line.strip():
                self._add(number, line, path)
        if not self.samples:
            raise DataError(f"manifest {config.path!r} holds no valid sample")

    def _add(self, number: int, line: str, path: Path) -> None:
        try:
            record: Any = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("a line must be a JSON object")
        except ValueError as exc:
            self.invalid_lines += 1
            log.warning("skipping %s line %d: %s", path, number, exc)
            return
        key_field = self.config.key_field
        key = (
            str(record[key_field]) if key_field and key_field in record else f"{path.name}:{number}"
        )
        sample: RawSample = {"__key__": key}
        mapped = {
            target: record[field] for target, field in self.config.fields.items() if field in record
        }
        for field, value in {**record, **mapped}.items():
            if field in self.config.media_fields and isinstance(value, str):
                value = str((self.root / value).resolve())
            sample[field] = value
        self.samples.append(sample)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> RawSample:
        return dict(self.samples[index])

    def iter_raw(self) -> Iterator[RawSample]:
        for index in range(len(self)):
            yield self[index]


def make_jsonl_source(config: JsonlSpec) -> JsonlSource:
    """Registry factory of the ``jsonl`` source."""
    return JsonlSource(config)


@hookimpl
def modaloom_register_sources(registry: Registry) -> None:
    """Register the JSONL manifest source."""
    registry.add_source(
        make_jsonl_source,
        JsonlSpec,
        description="JSONL manifest with media paths relative to it",
    )
