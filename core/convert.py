"""``modaloom data convert``: a public dataset's annotation files -> one JSONL manifest per split.

A converter (registry kind ``converter``, hook ``modaloom_register_converters``; the built-in
ones live in ``plugins/recipes/``) reads the files of one format and yields `ConvertedItem`s.
`convert_dataset` turns them into manifests the ``jsonl`` source reads, one line per item
(image, video or clip)::

    {"id": "391895", "item": "391895", "image": "../coco/val2014/COCO_val2014_000000391895.jpg",
     "text": ["a man riding a bike", ...]}

- media fields (``image``, ``video``, ``audio``) are paths relative to the manifest, found under
  ``--media-root``; a line whose media file is missing is left out (``keep_missing`` keeps it),
  counted and listed in one WARNING and in ``convert_report.json``;
- ``text`` is the item's list of captions: training draws one at random on each visit (the
  text processor), retrieval and captioning evaluation read all of them;
- ``item`` is the item id that the retrieval evaluator's ``match_by: item`` groups by; VQA lines
  add ``qa`` (the ``qa`` evaluator's ``[{question, answer: [10 human answers]}]``), and the
  ``train`` split's most frequent answers (each question's most common one) go to
  ``answer_list.json``, the ``qa`` evaluator's ``answer_list``.

With ``shards``, each split is also packed into webdataset shards (`pack_manifest`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from modaloom.core.data_commands import pack_manifest
from modaloom.core.errors import DataError
from modaloom.core.registry import Registry

log = logging.getLogger(__name__)

REPORT = "convert_report.json"
ANSWER_LIST = "answer_list.json"
ANSWER_LIST_SIZE = 3128
"""Candidates written to ``answer_list.json`` (the size of BLIP's VQA answer list)."""
SHOWN_MISSING = 20
"""Missing media paths listed in the report (the WARNING shows the first 3)."""


@dataclass(frozen=True)
class ConvertedItem:
    """One manifest line of a split.

    Attributes:
        split: the manifest it goes to (``train``, ``val``, ``test``, ...).
        key: the item id: the line's ``id`` and ``item``.
        media: field (``image``, ``video``, ``audio``) -> candidate paths relative to the media
            root; the first that exists is written (several file layouts are in use).
        fields: every other field of the line (``text``, ``qa``, ...).
    """

    split: str
    key: str
    media: dict[str, tuple[str, ...]]
    fields: dict[str, Any]


Converter = Callable[[Sequence[Path]], Iterable[ConvertedItem]]
"""``(source files) -> items``; raises `DataError` for a malformed file."""


@dataclass
class ConvertReport:
    """What `convert_dataset` wrote; saved as ``OUTPUT/convert_report.json``."""

    format: str
    sources: list[str]
    media_root: str
    manifests: dict[str, str] = field(default_factory=dict)
    """Split -> manifest path."""
    items: dict[str, int] = field(default_factory=dict)
    """Split -> lines written."""
    captions: dict[str, int] = field(default_factory=dict)
    """Split -> captions (strings of ``text``) written."""
    missing: dict[str, int] = field(default_factory=dict)
    """Split -> items whose media file is missing (left out unless ``keep_missing``)."""
    missing_examples: list[str] = field(default_factory=list)
    """The first missing media paths."""
    kept_missing: bool = False
    shards: dict[str, list[str]] = field(default_factory=dict)
    """Split -> shard paths (with ``shards``)."""
    shard_fields: dict[str, dict[str, str]] = field(default_factory=dict)
    """Split -> the ``webdataset`` source ``fields`` that read its shards."""
    answer_list: str | None = None
    """``answer_list.json``, when training items carry QA pairs (``qa``)."""


def captions(values: Any) -> list[str]:
    """Non-empty stripped strings of a caption or a list of captions."""
    values = values if isinstance(values, list | tuple) else [values]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def split_of(path: Path, default: str = "train") -> str:
    """A split named by a file name: ``desc_val.json`` -> ``val``, ``test.csv`` -> ``test``."""
    words = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    for split, names in (("val", {"val", "valid", "validate", "validation"}), ("test", {"test"})):
        if words & names:
            return split
    return default


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content.

    Raises:
        DataError: the file is missing or not JSON; ``what`` names the expected content.
    """
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; pass {what}") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable JSON file ({exc}); pass {what}") from None


def read_csv(path: Path, columns: Sequence[str], what: str) -> Iterator[dict[str, str]]:
    """The rows of a CSV file with a header holding ``columns``.

    Raises:
        DataError: the file is missing, or its header lacks one of ``columns``.
    """
    try:
        handle: IO[str] = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); pass {what}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        absent = [c for c in columns if c not in header]
        if absent:
            raise DataError(
                f"{path} is not {what}: its header {header} lacks {absent} "
                f"(expected columns {', '.join(columns)})"
            )
        yield from reader


def require(record: Any, keys: Sequence[str], where: str, expected: str) -> dict[str, Any]:
    """``record`` when it is an object holding ``keys``.

    Raises:
        DataError: it is not, naming ``where`` and the ``expected`` layout.
    """
    if not isinstance(record, dict):
        raise DataError(f"{where} is a {type(record).__name__}, not an object; expected {expected}")
    absent = [key for key in keys if key not in record]
    if absent:
        raise DataError(f"{where} has no {', '.join(map(repr, absent))}; expected {expected}")
    return record


def convert_dataset(
    format: str,
    sources: Sequence[Path],
    output: Path,
    media_root: Path | None = None,
    *,
    keep_missing: bool = False,
    shards: bool = False,
    shard_size: int = 1000,
    registry: Registry | None = None,
) -> ConvertReport:
    """Write ``OUTPUT/<split>.jsonl`` for each split of a dataset, and ``convert_report.json``.

    Args:
        format: a registered converter (``coco-karpathy``, ``msrvtt``, ...).
        sources: its annotation files.
        output: directory of the manifests (created).
        media_root: where media paths start (default: the first source's directory).
        keep_missing: write lines whose media file is missing (never with ``shards``).
        shards: also pack each split into ``OUTPUT/shards/<split>/shard-NNNNNN.tar``.
        shard_size: samples per shard.
        registry: where the converter is found (the default registry when omitted).

    Returns:
        The report (also written to ``OUTPUT/convert_report.json``).

    Raises:
        DataError: a malformed source file, no item at all, or ``keep_missing`` with ``shards``.
        UnknownComponentError: no such format.
    """
    if registry is None:
        from modaloom.core.plugins import default_registry

        registry = default_registry()
    converter = registry.converter_factory(format)
    if keep_missing and shards:
        raise DataError("--keep-missing cannot be packed into --shards: pass only one of them")
    root = (media_root or Path(sources[0]).parent).absolute()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    report = ConvertReport(format, [str(s) for s in sources], str(root), kept_missing=keep_missing)
    answers: Counter[str] = Counter()
    _write_manifests(converter(list(sources)), root, output, report, answers)
    if answers:
        top = [answer for answer, _ in answers.most_common(ANSWER_LIST_SIZE)]
        (output / ANSWER_LIST).write_text(json.dumps(top, ensure_ascii=False) + "\n")
        report.answer_list = str(output / ANSWER_LIST)
    if not report.items:
        raise DataError(
            f"no {format} item in {', '.join(report.sources)}; pass the format's annotation files"
        )
    _warn_missing(report, root, output)
    if shards:
        _pack(report, output, shard_size)
    (output / REPORT).write_text(json.dumps(asdict(report), indent=1) + "\n")
    return report


def _write_manifests(
    items: Iterable[ConvertedItem],
    root: Path,
    output: Path,
    report: ConvertReport,
    answers: Counter[str],
) -> None:
    """Write each item to its split's manifest (atomically, when every item is read); count in
    ``answers`` each ``train`` question's most common answer."""
    prefix = os.path.relpath(root, output.absolute())  # manifest dir -> media root
    with ExitStack() as stack:
        handles: dict[str, IO[str]] = {}
        for item in items:
            if item.split not in handles:
                temporary = output / f".{item.split}.jsonl.{os.getpid()}.tmp"
                handles[item.split] = stack.enter_context(temporary.open("w", encoding="utf-8"))
                for counts in (report.items, report.captions, report.missing):
                    counts[item.split] = 0
            if item.split == "train":
                answers.update(_top_answers(item.fields.get("qa")))
            line = _line(item, str(root), prefix, report)
            if line is not None:
                handles[item.split].write(json.dumps(line, ensure_ascii=False) + "\n")
                report.items[item.split] += 1
                report.captions[item.split] += len(captions(item.fields.get("text")))
    for split in handles:
        manifest = output / f"{split}.jsonl"
        os.replace(output / f".{split}.jsonl.{os.getpid()}.tmp", manifest)
        report.manifests[split] = str(manifest)


def _top_answers(qa: Any) -> list[str]:
    """The most common human answer of each QA pair (``[{question, answer: [...]}]``)."""
    pairs = qa if isinstance(qa, list) else []
    tops = []
    for pair in pairs:
        found = captions(pair.get("answer") if isinstance(pair, dict) else None)
        if found:
            tops.append(Counter(found).most_common(1)[0][0])
    return tops


def _line(item: ConvertedItem, root: str, prefix: str, report: ConvertReport) -> dict | None:
    """The manifest line of an item (media paths ``prefix/<candidate>``), or ``None`` when a
    media file is missing under ``root`` (counted). Plain strings: this runs once per item."""
    line: dict[str, Any] = {"id": item.key, "item": item.key}
    missing: list[str] = []
    for name, candidates in item.media.items():
        found = next((c for c in candidates if os.path.isfile(os.path.join(root, c))), None)
        if found is None:
            missing.append(os.path.join(root, candidates[0]))
            found = candidates[0]
        line[name] = os.path.normpath(os.path.join(prefix, found))
    if missing:
        report.missing[item.split] += 1
        if len(report.missing_examples) < SHOWN_MISSING:
            report.missing_examples.append(missing[0])
        if not report.kept_missing:
            return None
    line.update(item.fields)
    return line


def _warn_missing(report: ConvertReport, root: Path, output: Path) -> None:
    missing = sum(report.missing.values())
    if not missing:
        return
    total = sum(report.items.values()) + (0 if report.kept_missing else missing)
    first = ", ".join(report.missing_examples[:3])
    fate = (
        "kept in the manifests (--keep-missing)"
        if report.kept_missing
        else "left out of the manifests (--keep-missing keeps them)"
    )
    log.warning(
        "%d of %d items have no media file under %s (first: %s); they were %s; "
        "all counts and the first %d paths are in %s",
        missing,
        total,
        root,
        first,
        fate,
        SHOWN_MISSING,
        output / REPORT,
    )


def _pack(report: ConvertReport, output: Path, shard_size: int) -> None:
    for split, manifest in report.manifests.items():
        if not report.items[split]:
            log.warning("split %s has no item with its media; no shards written for it", split)
            continue
        packed = pack_manifest(Path(manifest), output / "shards" / split, shard_size)
        report.shards[split] = [str(path) for path in packed.shards]
        report.shard_fields[split] = packed.fields
