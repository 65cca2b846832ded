"""The rows a retrieval evaluation ranks: items and their captions, and which rows match.

An *item* is an image, video or clip; its identity is a sample's ``item`` field value or, by
default, its key, so samples sharing an item (one manifest line per caption) are one target.
Its captions are the strings of its samples' text field (a caption or a list: COCO's 5). When a
side of the evaluation is the text component, every caption is a row of that side (captions
after the first are tokenized and embedded here); the other side has one row per item. When no
side reads text, both sides have one row per item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from modaloom.core.compose import FeatureCache
from modaloom.core.data import batch_from_values
from modaloom.core.evaluation import EvalContext, concat_sides
from modaloom.core.interfaces import Batch, Objective
from modaloom.core.metrics import Matches
from modaloom.plugins.evaluators.captioning import caption_references, item_of
from modaloom.plugins.evaluators.retrieval_rerank import text_inputs, visual_inputs

Side = dict[str, Tensor]
SideName = Literal["query", "target"]


@dataclass(frozen=True)
class GalleryConfig:
    """What `encode_batch` needs of the evaluator's spec."""

    query: tuple[str, ...]
    target: tuple[str, ...]
    text_field: str
    item_field: str


@dataclass
class Gallery:
    """Both sides, on the CPU, with what matches what.

    Attributes:
        query: the query side's `Objective.retrieval_side` tensors, one row per query.
        target: the target side's, one row per target.
        matches: positives of each query (`Matches`).
        query_text: per query row, its caption (an item row: its first caption).
        target_key: per target row, the key of its (first) sample.
        target_text: per target row, its caption (an item row: its first caption).
        texts: ITM inputs of the text rows (``input_ids``, ``attention_mask``) when re-ranking.
        visuals: ITM inputs of the item rows (``visual``, ``visual_mask``) when re-ranking.
    """

    query: Side
    target: Side
    matches: Matches
    query_text: list[str]
    target_key: list[str]
    target_text: list[str]
    texts: Side | None = None
    visuals: Side | None = None


def cpu(side: Side) -> Side:
    """Every tensor of a side on the CPU."""
    return {key: value.cpu() for key, value in side.items()}


def rows_of(side: Side, rows: list[int]) -> Side:
    """The rows ``rows`` of every tensor of a side."""
    index = torch.tensor(rows, dtype=torch.long)
    return {key: value[index.to(value.device)] for key, value in side.items()}


def caption_side(ctx: EvalContext, cfg: GalleryConfig, batch: Batch) -> SideName | None:
    """The side made of the text component (its rows are captions), if any."""
    for name, components in (("query", cfg.query), ("target", cfg.target)):
        if len(components) != 1:
            continue
        try:
            field = ctx.model.input_field(components[0], batch)
        except KeyError:
            continue
        if field == cfg.text_field:
            return "query" if name == "query" else "target"
    return None


def encode_batch(
    ctx: EvalContext, cfg: GalleryConfig, objective: Objective, batch: Batch, itm: Any = None
) -> dict[str, Any]:
    """One batch's sides on the CPU, its items and captions, and the side of the captions after
    each sample's first (the batch itself holds the first).

    Args:
        itm: an ``itm`` objective whose inputs to keep for re-ranking, or ``None``.
    """
    features = ctx.features(batch)
    keys, metas = list(batch["__keys__"]), batch["__meta__"]
    sides = {}
    for name, components in (("query", cfg.query), ("target", cfg.target)):
        side = objective.retrieval_side(components, features)
        assert side is not None  # checked on the probe batch by EvalContext.objective
        sides[name] = cpu(side)
    which = caption_side(ctx, cfg, batch)
    record: dict[str, Any] = {
        "sides": sides,
        "keys": keys,
        "items": [item_of(key, meta, cfg.item_field) for key, meta in zip(keys, metas)],
        "captions": [caption_references(meta, cfg.text_field) for meta in metas],
        "caption_side": which,
        "extra": None,
        "texts": None if itm is None else text_inputs(itm, features),
        "visuals": None if itm is None else visual_inputs(itm, features),
        "extra_texts": None,
    }
    extra = [(row, text) for row, texts in enumerate(record["captions"]) for text in texts[1:]]
    if which is not None and extra:
        values = {cfg.text_field: [text for _, text in extra]}
        names = [f"{keys[row]}#{i}" for i, (row, _) in enumerate(extra)]
        text_batch = batch_from_values(ctx.processors, values, keys=names, device=ctx.device)
        text_features = FeatureCache(ctx.model, text_batch)
        side = objective.retrieval_side(
            cfg.query if which == "query" else cfg.target, text_features
        )
        assert side is not None
        record["extra"] = cpu(side)
        if itm is not None:
            record["extra_texts"] = text_inputs(itm, text_features)
    return record


class GalleryBuilder:
    """Joins `encode_batch` records, in source order, into a `Gallery`."""

    def __init__(self, by_text: bool) -> None:
        self.by_text = by_text
        self.which: SideName | None = None
        self.items: dict[str, int] = {}
        self.item_key: list[str] = []
        self.item_captions: list[list[str]] = []
        self.item_sides: dict[str, list[Side]] = {"query": [], "target": []}
        self.caption_parts: list[Side] = []
        self.caption_item: list[int] = []
        self.caption_text: list[str] = []
        self.text_parts: list[Side] = []
        self.visual_parts: list[Side] = []

    def new_items(self, record: dict[str, Any]) -> list[int]:
        """Register the record's samples' items and captions; the rows of first-seen items."""
        rows = []
        for row, (key, item) in enumerate(zip(record["keys"], record["items"], strict=True)):
            if item not in self.items:
                self.items[item] = len(self.items)
                self.item_key.append(key)
                self.item_captions.append([])
                rows.append(row)
            known = self.item_captions[self.items[item]]
            known += [text for text in record["captions"][row] if text not in known]
        return rows

    def add(self, record: dict[str, Any]) -> None:
        """One batch's record."""
        self.which = record["caption_side"]
        item_rows = self.new_items(record)
        for name in ("query", "target"):
            if name != self.which:
                self.item_sides[name].append(rows_of(record["sides"][name], item_rows))
        if record["visuals"] is not None:
            self.visual_parts.append(rows_of(record["visuals"], item_rows))
        if self.which is None:
            return
        captions = record["captions"]
        rows = [row for row, texts in enumerate(captions) if texts]
        # batch rows hold first captions, `extra` the others: put each sample's in order
        where = [(row, 0) for row in rows] + [
            (row, i) for row, texts in enumerate(captions) for i in range(1, len(texts))
        ]
        order = sorted(range(len(where)), key=where.__getitem__)
        parts = [rows_of(record["sides"][self.which], rows)]
        parts += [record["extra"]] if record["extra"] is not None else []
        self.caption_parts.append(rows_of(concat_sides(parts), order))
        if record["texts"] is not None:
            texts = [rows_of(record["texts"], rows)]
            texts += [record["extra_texts"]] if record["extra_texts"] is not None else []
            self.text_parts.append(rows_of(concat_sides(texts), order))
        placed = sorted(where)
        self.caption_text += [captions[row][i] for row, i in placed]
        self.caption_item += [self.items[record["items"][row]] for row, _ in placed]

    def caption_ids(self, texts: list[list[str]], table: dict[str, int]) -> Tensor | None:
        """(N, C) ids of each row's captions in ``table`` (grown as needed), -1 padded;
        ``None`` unless matching by text."""
        if not self.by_text:
            return None
        ids = torch.full((len(texts), max([1, *map(len, texts)])), -1, dtype=torch.long)
        for index, row in enumerate(texts):
            for column, text in enumerate(row):
                ids[index, column] = table.setdefault(text, len(table))
        return ids

    def gallery(self) -> Gallery:
        """The joined `Gallery`."""
        if not self.items:
            raise ValueError("retrieval: the source has no samples")
        index = torch.arange(len(self.item_key))
        label = [texts[0] if texts else "" for texts in self.item_captions]
        table: dict[str, int] = {}
        item_texts = self.caption_ids(self.item_captions, table)
        texts = concat_sides(self.text_parts) if self.text_parts else None
        visuals = concat_sides(self.visual_parts) if self.visual_parts else None
        if self.which is None:
            query, target = (concat_sides(self.item_sides[n]) for n in ("query", "target"))
            matches = Matches(index, index, item_texts, item_texts)
            return Gallery(query, target, matches, label, self.item_key, label, texts, visuals)
        captions = concat_sides(self.caption_parts)
        caption_texts = self.caption_ids([[text] for text in self.caption_text], table)
        caption_items = torch.tensor(self.caption_item, dtype=torch.long)
        matches = Matches(caption_items, index, caption_texts, item_texts)
        if self.which == "query":
            items = concat_sides(self.item_sides["target"])
            text = self.caption_text
            return Gallery(captions, items, matches, text, self.item_key, label, texts, visuals)
        items = concat_sides(self.item_sides["query"])
        keys = [self.item_key[item] for item in self.caption_item]
        swapped = matches.transposed()
        return Gallery(items, captions, swapped, label, keys, self.caption_text, texts, visuals)
