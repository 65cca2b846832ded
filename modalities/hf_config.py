"""Checking a component's ``config:`` against its `transformers` config class, building nothing.

`HFEncoderSpec` runs `config_problems` when a spec loads, so ``modaloom validate`` reports
``model.components.vision.config.patch_size: must be a positive integer, got -1`` instead of a
traceback when the model is built. The config class itself checks the types of its fields
(``hidden_size: abc``); the values it accepts but cannot build with (zero heads, negative
patches, a width the heads do not divide, an unknown activation) are checked here. Sizes are
capped too, so a typo of a few digits cannot make a build run for hours.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Collection, Mapping
from typing import Any

from transformers import PretrainedConfig

__all__ = ["MAX_LAYERS", "MAX_SIZE", "RESERVED", "config_problems"]

MAX_SIZE = 1 << 20
"""Largest width, length or count a size field may have (1,048,576)."""
MAX_LAYERS = 1024
"""Most layers a model may have."""
RESERVED = frozenset({"attn_implementation"})
"""Config fields modaloom sets itself (PyTorch SDPA attention)."""

SIZES = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "image_size",
    "patch_size",
    "num_channels",
    "num_frames",
    "tubelet_size",
    "frequency_stride",
    "time_stride",
    "max_length",
    "num_mel_bins",
    "projection_dim",
)
"""Fields that must be positive integers when a config class has them."""
_INTERNAL = frozenset({"_name_or_path", "model_type", "transformers_version"})
_FIELD_IN_ERROR = re.compile(r"field '(\w+)'")
_KNOWN: dict[type[PretrainedConfig], frozenset[str]] = {}

Problem = tuple[str, str]


def config_problems(
    config_class: type[PretrainedConfig], fields: Mapping[str, Any], standalone: bool
) -> list[Problem]:
    """What is wrong with ``fields`` as a ``config_class``, as (``config.<field>``, message).

    Args:
        config_class: the `transformers` config class (`ViTConfig`, ...).
        fields: the component's ``config:`` mapping.
        standalone: the fields with the class defaults are the whole config (a random init);
            otherwise they override a checkpoint's or a shared component's config, whose other
            values are unknown here, so rules between fields are not checked.

    Returns:
        Problems; empty when the config can be built.
    """
    known = known_fields(config_class)
    problems = [
        (f"config.{key}", _unknown(key, known))
        for key in fields
        if key in RESERVED or key not in known
    ]
    usable = {key: value for key, value in fields.items() if key in known and key not in RESERVED}
    try:
        config = config_class(**usable)
    except Exception as exc:  # the class's own checks: strict field types, __post_init__ rules
        field = _FIELD_IN_ERROR.search(str(exc))
        where = f"config.{field.group(1)}" if field and field.group(1) in usable else "config"
        reason = str(exc).strip().splitlines()[-1].strip()
        return [*problems, (where, f"not a valid {config_class.__name__} value: {reason}")]
    values = {key: getattr(config, key) for key in known if hasattr(config, key)}
    problems += _value_problems(values, usable)
    if standalone and not problems:
        problems += _relation_problems(values, usable)
    return problems


def known_fields(config_class: type[PretrainedConfig]) -> frozenset[str]:
    """The field names ``config_class`` declares, its base's included."""
    if config_class not in _KNOWN:
        _KNOWN[config_class] = _declared(config_class)
    return _KNOWN[config_class]


def _declared(config_class: type[PretrainedConfig]) -> frozenset[str]:
    names = (
        {f.name for f in dataclasses.fields(config_class)}
        if dataclasses.is_dataclass(config_class)
        else set()
    )
    return frozenset(names | set(config_class().to_dict())) - _INTERNAL


def _unknown(key: str, known: frozenset[str]) -> str:
    if key in RESERVED:
        return "is set by modaloom; remove it"
    close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"is not a field of this component's transformers config{hint}"


def _activations() -> Collection[str]:
    """The ``hidden_act`` names `transformers` knows; imported when a spec sets one (the module
    loads torch's compiler stack, which only building a model needs)."""
    from transformers.activations import ACT2FN

    return ACT2FN


def _value_problems(values: Mapping[str, Any], given: Mapping[str, Any]) -> list[Problem]:
    """Single-field rules, for the fields the spec gives."""
    problems: list[Problem] = []
    for key in given:
        value: Any = values.get(key)
        limit = MAX_LAYERS if key == "num_hidden_layers" else MAX_SIZE
        if key in SIZES and not (_integer(value) and 1 <= value <= limit):
            problems.append((f"config.{key}", f"must be an integer in 1..{limit:,}, got {value!r}"))
        elif ("dropout" in key or key.endswith("_prob")) and not _fraction(value):
            problems.append((f"config.{key}", f"must be a number in [0, 1], got {value!r}"))
        elif key == "layer_norm_eps" and not (_number(value) and value > 0):
            problems.append((f"config.{key}", f"must be a positive number, got {value!r}"))
        elif key == "initializer_range" and not (_number(value) and value >= 0):
            problems.append((f"config.{key}", f"must be a number >= 0, got {value!r}"))
        elif key == "hidden_act" and isinstance(value, str) and value not in _activations():
            names = ", ".join(sorted(_activations()))
            problems.append((f"config.{key}", f"unknown activation {value!r}; use one of {names}"))
    return problems


def _relation_problems(values: Mapping[str, Any], given: Mapping[str, Any]) -> list[Problem]:
    """Rules between fields of a standalone config, located at a field the spec gives."""
    problems: list[Problem] = []
    hidden, heads = values.get("hidden_size"), values.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and hidden % heads:
        where = "hidden_size" if "hidden_size" in given else "num_attention_heads"
        message = f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        problems.append((f"config.{where}", message))
    patch, image = values.get("patch_size"), values.get("image_size")
    if (
        isinstance(patch, int)
        and isinstance(image, int)
        and "image_size" in given
        and patch > image
    ):
        where = "patch_size" if "patch_size" in given else "image_size"
        problems.append((f"config.{where}", f"patch_size {patch} exceeds image_size {image}"))
    return problems


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fraction(value: Any) -> bool:
    return value is None or (_number(value) and 0 <= value <= 1)
