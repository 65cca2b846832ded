"""Label data for OmniVL's UniVLC (SPEC B3): class ids become prompted texts in one label space.

A label sample is ``{"__key__", "image" | "video": media, "label": offset + class index,
"text": prompts}``. The prompts are the class name put into each template (``"a photo of a
{}."``); by default the sample carries the whole list, in template order, and the text processor
picks one at random with the sample's seeded generator in training and the first in evaluation
(``pick_template: per_index`` instead fixes one template per sample index).

Label space. Class ids of different label sources must not collide: each label source either
sets ``label_offset`` or is assigned one by `assign_label_offsets` (after every explicit range, in
spec order), which the data layer calls once after building the sources. Caption data carries
no class: its samples have no ``label`` and are batched with label -1, meaning "caption pair,
unique" (UniVLC gives each of them a fresh id at every step).

Backing data: an image-folder layout (``root/<class_name>/*.png``; class names are the folder
names, sorted, unless ``classes`` is given; ``_`` reads as a space in prompts) or a JSONL manifest
(``{"image": "a.png", "label": 3}`` per line, or the class name as label) with ``classes``.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from modaloom.core.errors import DataError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.interfaces import RawSample, Source
from modaloom.core.registry import Registry
from modaloom.core.spec_models import Seed, SourceSpec
from modaloom.plugins.sources.jsonl import JsonlSource, JsonlSpec

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image showing a {}.")
MEDIA_SUFFIXES = {
    "image": frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}),
    "video": frozenset({".mp4", ".webm", ".mkv", ".avi", ".mov"}),
}


class LabelsSpec(SourceSpec):
    """Image (or video) classification data turned into prompted texts for UniVLC."""

    type: Literal["labels"] = "labels"
    root: str | None = None
    """An image-folder directory: ``root/<class_name>/<file>``."""
    manifest: str | None = None
    """A JSONL manifest with the media path and ``label`` (class index or name) per line."""
    classes: list[str] | None = None
    """Class names in label order; required with ``manifest``, folder names when omitted."""
    modality: Literal["image", "video"] = "image"
    """The media field of the samples."""
    templates: list[str] = Field(list(DEFAULT_TEMPLATES), min_length=1)
    """Prompt templates, each with one ``{}`` for the class name; the first is used in eval."""
    pick_template: Literal["per_draw", "per_index"] = "per_draw"
    """``per_draw``: the text processor picks a template each time a sample is drawn;
    ``per_index``: one template per sample index, from a generator seeded with ``seed``."""
    seed: Seed = 0
    """Seed of the ``per_index`` template choice."""
    label_offset: int | None = Field(None, ge=0)
    """First label id of this source; assigned after the explicit ranges when omitted."""

    @model_validator(mode="after")
    def _check(self) -> LabelsSpec:
        if (self.root is None) == (self.manifest is None):
            raise ValueError("give exactly one of `root` (an image folder) or `manifest` (JSONL)")
        if self.manifest is not None and not self.classes:
            raise ValueError("a `manifest` needs `classes: [name, ...]` in label order")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        bad = [t for t in self.templates if t.count("{}") != 1]
        if bad:
            raise ValueError(f"every template needs exactly one {{}} for the class name: {bad}")
        return self


class InMemorySource(Source):
    """Map-style source over a list of raw samples held in memory."""

    def __init__(self, samples: Sequence[RawSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> RawSample:
        return dict(self.samples[index])

    def iter_raw(self) -> Iterator[RawSample]:
        for index in range(len(self)):
            yield self[index]


class LabelSource(Source):
    """Map-style label data: wraps a map-style source of ``{media, "label": class}`` samples.

    Args:
        base: samples with the media field and ``label`` (class index or class name).
        classes: class names in label order.
        templates: prompt templates, each with one ``{}``.
        modality: the media field.
        label_offset: first label id, or ``None`` to have `assign_label_offsets` choose.
        pick_template: see `LabelsSpec.pick_template`.
        seed: seed of the ``per_index`` choice.

    Raises:
        DataError: a sample lacks its media or has a label that is not a class.
    """

    def __init__(
        self,
        base: Source,
        classes: Sequence[str],
        templates: Sequence[str],
        modality: str = "image",
        label_offset: int | None = None,
        pick_template: str = "per_draw",
        seed: int = 0,
    ) -> None:
        if not base.is_map_style:
            raise DataError("label data must be map-style (a folder, a manifest or in memory)")
        self.base, self.classes, self.templates = base, list(classes), list(templates)
        self.modality, self.pick_template, self.seed = modality, pick_template, seed
        self.explicit_offset = label_offset
        self.label_offset = label_offset or 0
        self._index = {name: index for index, name in enumerate(self.classes)}
        self.class_ids = [self._class_of(base[index]) for index in range(len(base))]
        if not self.class_ids:
            raise DataError("label data holds no sample")

    def _class_of(self, raw: RawSample) -> int:
        key, label = raw.get("__key__", "?"), raw.get("label")
        if self.modality not in raw:
            raise DataError(f"label sample {key!r} has no {self.modality!r} field")
        if isinstance(label, str) and label in self._index:
            return self._index[label]
        valid = isinstance(label, int) and not isinstance(label, bool)
        if valid and 0 <= label < len(self.classes):
            return int(label)
        raise DataError(
            f"label sample {key!r} has label {label!r}, which is not a class index "
            f"in [0, {len(self.classes)}) nor a class name"
        )

    @property
    def num_classes(self) -> int:
        """How many classes this source has."""
        return len(self.classes)

    @property
    def label_range(self) -> range:
        """The label ids this source uses."""
        return range(self.label_offset, self.label_offset + self.num_classes)

    def prompts(self, class_index: int) -> list[str]:
        """Every template filled with one class name (``_`` reads as a space)."""
        name = self.classes[class_index].replace("_", " ")
        return [template.format(name) for template in self.templates]

    def class_prompts(self, template: int = 0) -> list[str]:
        """One prompt per class, in label order (for zero-shot classification)."""
        return [self.prompts(index)[template] for index in range(self.num_classes)]

    def __len__(self) -> int:
        return len(self.class_ids)

    def __getitem__(self, index: int) -> RawSample:
        raw = self.base[index]
        class_index = self.class_ids[index]
        prompts: str | list[str] = self.prompts(class_index)
        if self.pick_template == "per_index":
            prompts = random.Random(f"labels:{self.seed}:{index}").choice(prompts)
        return {
            "__key__": raw["__key__"],
            self.modality: raw[self.modality],
            "label": self.label_offset + class_index,
            "text": prompts,
        }

    def iter_raw(self) -> Iterator[RawSample]:
        for index in range(len(self)):
            yield self[index]

    def texts(self, limit: int | None = None) -> Iterator[str]:
        """Every prompt of every class (what the tokenizer needs), no media read."""
        texts = [text for index in range(self.num_classes) for text in self.prompts(index)]
        yield from texts[:limit]


def assign_label_offsets(sources: Mapping[str, Source]) -> dict[str, int]:
    """Give label sources without ``label_offset`` disjoint id ranges after the explicit ones.

    Args:
        sources: built sources by name, in spec order; non-label sources are ignored.

    Returns:
        The first label id of each label source, by name.

    Raises:
        DataError: two explicit ranges overlap.
    """
    labeled = {name: s for name, s in sources.items() if isinstance(s, LabelSource)}
    explicit = sorted(
        (s.label_offset, name) for name, s in labeled.items() if s.explicit_offset is not None
    )
    for (_, first), (start, second) in itertools.pairwise(explicit):
        if start < labeled[first].label_range.stop:
            raise DataError(
                f"label sources {first!r} ({_describe(labeled[first])}) and {second!r} "
                f"({_describe(labeled[second])}) overlap; change label_offset so ids are disjoint"
            )
    free = max((labeled[name].label_range.stop for _, name in explicit), default=0)
    for source in labeled.values():
        if source.explicit_offset is None:
            source.label_offset = free
            free += source.num_classes
    return {name: source.label_offset for name, source in labeled.items()}


def _describe(source: LabelSource) -> str:
    return f"ids {source.label_range.start}..{source.label_range.stop - 1}"


def folder_samples(
    root: Path, modality: str, classes: Sequence[str] | None
) -> tuple[list[RawSample], list[str]]:
    """Samples of an image-folder layout and the class names (sorted folders by default)."""
    if not root.is_dir():
        raise DataError(f"label folder {str(root)!r} does not exist; check data.sources.*.root")
    names = list(classes) if classes else sorted(p.name for p in root.iterdir() if p.is_dir())
    samples: list[RawSample] = []
    for index, name in enumerate(names):
        directory = root / name
        if not directory.is_dir():
            raise DataError(f"class {name!r} has no folder {str(directory)!r}")
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() in MEDIA_SUFFIXES[modality]:
                key = f"{name}/{path.name}"
                samples.append({"__key__": key, modality: str(path), "label": index})
    if not samples:
        raise DataError(f"label folder {str(root)!r} holds no {modality} file")
    return samples, names


def make_labels_source(config: LabelsSpec) -> LabelSource:
    """Registry factory of the ``labels`` source."""
    base: Source
    if config.root is not None:
        samples, classes = folder_samples(
            Path(config.root).expanduser(), config.modality, config.classes
        )
        base = InMemorySource(samples)
    else:
        assert config.manifest is not None and config.classes is not None
        base = JsonlSource(JsonlSpec(path=config.manifest, media_fields=(config.modality,)))
        classes = config.classes
    return LabelSource(
        base,
        classes,
        config.templates,
        config.modality,
        config.label_offset,
        config.pick_template,
        config.seed,
    )


@hookimpl
def modaloom_register_sources(registry: Registry) -> None:
    """Register the ``labels`` source."""
    registry.add_source(
        make_labels_source,
        LabelsSpec,
        description="class-labelled images or videos as prompted texts (UniVLC)",
    )
