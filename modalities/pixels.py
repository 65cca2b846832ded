"""Normalisation and size of the image and video processors: the data spec's, else those of the
checkpoint a ``pretrained`` vision component starts from, else ImageNet's at 224 pixels.

``data.image`` and ``data.video`` leave ``mean``, ``std`` and ``size`` unset by default. A
processor fills them (`resolve_pixels`) from the ``preprocessor_config.json`` of the first
``pretrained`` component that reads its field (`DataContext.pretrained`): CLIP's and
TimeSformer's ``image_mean``, ``image_std`` and ``crop_size``, a ViT's ``size``. What is still
unset then takes ImageNet's statistics and 224 pixels, the values these fields had before they
could be unset, so a spec without ``pretrained`` processes pixels exactly as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from modaloom.core.interfaces import DataContext
from modaloom.core.spec_models import Spec
from modaloom.modalities.hf_checkpoint import preprocessor_config, take_from_checkpoint
from modaloom.modalities.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DEFAULT_PIXELS",
    "Pixels",
    "checkpoint_pixels",
    "default_pixels",
    "export_pixels",
    "pixels",
    "resolve_pixels",
]

SpecT = TypeVar("SpecT", bound=Spec)

DEFAULT_PIXELS: dict[str, Any] = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "size": 224}
"""What ``mean``, ``std`` and ``size`` are when neither the spec nor a checkpoint sets them."""


def _side(value: Any) -> int | None:
    """A side length from a preprocessor ``size``/``crop_size``: an int or a mapping with
    ``height``/``width`` (the shorter) or ``shortest_edge``."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return min(int(value["height"]), int(value["width"]))
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    return None


def checkpoint_pixels(checkpoint: str) -> dict[str, Any]:
    """``mean``, ``std`` and ``size`` from a checkpoint's ``preprocessor_config.json``.

    The size is the centre crop's when the processor crops (CLIP, TimeSformer), else the resize
    target (ViT). Absent entries are left out; no file gives ``{}``.

    Raises:
        ValueError: an entry has an unusable value.
    """
    settings = preprocessor_config(checkpoint)
    found: dict[str, Any] = {}
    for name, key in (("mean", "image_mean"), ("std", "image_std")):
        if key in settings:
            values = tuple(float(v) for v in settings[key])
            if len(values) != 3 or (name == "std" and min(values) <= 0.0):
                raise ValueError(f"{key} must be 3 numbers (std positive), got {settings[key]}")
            found[name] = values
    crops = settings.get("do_center_crop", "crop_size" in settings)
    size = _side(settings.get("crop_size")) if crops else None
    size = size or _side(settings.get("size"))
    if size is not None:
        if size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        found["size"] = size
    return found


class Pixels(NamedTuple):
    """A processor's resolved normalisation and output side."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int


def pixels(config: Spec) -> Pixels:
    """The pixel settings of a ``data.image`` / ``data.video`` config, unset ones at
    `DEFAULT_PIXELS` (a processor's config is resolved already: `resolve_pixels`)."""
    mean, std, size = (
        default if (value := getattr(config, name)) is None else value
        for name, default in DEFAULT_PIXELS.items()
    )
    return Pixels(mean, std, size)


def default_pixels(config: SpecT) -> SpecT:
    """``config`` with its unset ``mean``, ``std`` and ``size`` at `DEFAULT_PIXELS`."""
    unset = {name: value for name, value in DEFAULT_PIXELS.items() if getattr(config, name) is None}
    return config.model_copy(update=unset) if unset else config


def resolve_pixels(config: SpecT, ctx: DataContext, field: str) -> SpecT:
    """``config`` (``data.<field>``) with what it leaves unset taken from the checkpoint of the
    pretrained component that reads ``field``, then from `DEFAULT_PIXELS`.

    Raises:
        SpecError: at ``data.<field>``: the checkpoint's preprocessor config is unusable.
    """
    pretrained = ctx.pretrained.get(field)
    unset = [name for name in DEFAULT_PIXELS if getattr(config, name) is None]
    if pretrained is None or not unset:
        return default_pixels(config)
    return default_pixels(take_from_checkpoint(config, unset, pretrained, field, checkpoint_pixels))


def export_pixels(settings: Pixels, directory: Path) -> list[str]:
    """Write ``settings`` as a `transformers` `CLIPImageProcessor` (``preprocessor_config.json``)
    that does what evaluation does: the shorter side resized to ``size`` and the centre
    ``size`` x ``size`` crop (bilinear), scaled to [0, 1] and normalised; `checkpoint_pixels`
    reads the same mean, std and size back.

    Returns:
        The file written.
    """
    from transformers import CLIPImageProcessor
    from transformers.image_utils import PILImageResampling

    size = int(settings.size)
    processor = CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        resample=PILImageResampling.BILINEAR,
        image_mean=list(settings.mean),
        image_std=list(settings.std),
    )
    processor.save_pretrained(str(directory))
    return ["preprocessor_config.json"]
