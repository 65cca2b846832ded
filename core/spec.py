"""Experiment specs: dynamic unions from the registry, presets, overrides and `load_spec`."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args

from pydantic import BaseModel, Field, ValidationError, create_model

from modaloom.core.errors import SpecError, SpecProblems
from modaloom.core.registry import Kind, Registry
from modaloom.core.spec_models import (
    ComponentSpec,
    DataSpec,
    EvaluatorSpec,
    ExperimentSpec,
    ModelSpec,
    ObjectiveSpec,
    SourceSpec,
)
from modaloom.core.spec_yaml import check_size, number_problems, parse_yaml, read_spec_file

_KIND_OF_SECTION: dict[str, str] = {
    "components": "encoder or decoder",
    "objectives": "objective",
    "sources": "source",
    "eval_sources": "source",
    "eval": "evaluator",
}
_CACHE_ATTR = "_spec_class"
MAX_BASE_CHAIN = 64
"""Most specs a ``base:`` chain may hold (a spec, its base, the base's base, ...)."""


def _union(registry: Registry, kinds: Sequence[Kind], base: type[BaseModel]) -> Any:
    """A discriminated union over the config models registered under ``kinds``."""
    models = [c.config for kind in kinds for c in registry.of_kind(kind) if c.config is not None]
    if not models:
        return base
    for model in models:
        tag = model.model_fields["type"].annotation
        if get_args(tag) == () or not issubclass(model, base):
            raise TypeError(
                f"{model.__name__} must subclass {base.__name__} with `type: Literal[...]`"
            )
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007


def _modality_fields(registry: Registry) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for component in registry.of_kind("modality"):
        if component.config is not None:
            fields[component.name] = (component.config, component.config())
    return fields


def build_spec_class(registry: Registry) -> type[ExperimentSpec]:
    """Create the `ExperimentSpec` model for this registry (cached on the registry)."""
    cached = getattr(registry, _CACHE_ATTR, None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    component = _union(registry, ("encoder", "decoder"), ComponentSpec)
    objective = _union(registry, ("objective",), ObjectiveSpec)
    source = _union(registry, ("source",), SourceSpec)
    evaluator = _union(registry, ("evaluator",), EvaluatorSpec)
    model_spec = create_model(
        "ModelSpec",
        __base__=ModelSpec,
        components=(dict[str, component], ...),  # type: ignore[valid-type]
        objectives=(list[objective], ...),  # type: ignore[valid-type]
    )
    data_spec = create_model(
        "DataSpec",
        __base__=DataSpec,
        sources=(dict[str, source], ...),  # type: ignore[valid-type]
        eval_sources=(dict[str, source], {}),  # type: ignore[valid-type]
        **_modality_fields(registry),
    )
    spec_class = create_model(
        "ExperimentSpec",
        __base__=ExperimentSpec,
        model=(model_spec, ...),
        data=(data_spec, ...),
        eval=(list[evaluator], []),  # type: ignore[valid-type]
    )
    setattr(registry, _CACHE_ATTR, spec_class)
    return spec_class


# ---------------------------------------------------------------- loading and merging


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base`` (``base:`` inheritance and ``--set``).

    Mappings merge recursively, except that a mapping whose ``type`` differs from the base's
    replaces it (a webdataset source over a preset's jsonl one). ``key: null`` where the base
    holds a mapping removes the key (a base's source or component); on a value it sets null.
    Lists and scalars replace.
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        current = merged.get(key)
        if value is None and isinstance(current, Mapping):
            del merged[key]
        elif (
            isinstance(value, Mapping)
            and isinstance(current, Mapping)
            and not _retyped(current, value)
        ):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _retyped(base: Mapping[str, Any], override: Mapping[str, Any]) -> bool:
    return "type" in base and "type" in override and base["type"] != override["type"]


def _assign(node: dict[str, Any], key: str, value: Any) -> None:
    """``node[key] = value`` with the merge rules of `deep_merge`."""
    merged = deep_merge({key: node[key]} if key in node else {}, {key: value})
    node.pop(key, None)
    node.update(merged)


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.path=value`` override in place (the value is parsed as YAML and merged
    like a ``base:`` override: see `deep_merge`)."""
    path, sep, raw = assignment.partition("=")
    if not sep or not path:
        raise SpecError([("--set", f"{assignment!r} is not KEY=VALUE, e.g. train.steps=100")])
    value = parse_yaml(raw, f"--set {path}") if raw else ""
    keys = path.split(".")
    node: Any = tree
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                where = ".".join(keys[:depth])
                raise SpecError([(path, f"{where} has {len(node)} items; index {key} is invalid")])
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                _assign(node, key, value)
            else:
                node = node.setdefault(key, {})
        else:
            raise SpecError([(path, f"{'.'.join(keys[:depth])} is a value, not a section")])


def preset_tree(name: str, registry: Registry) -> dict[str, Any]:
    """The raw (unresolved) mapping of a registered preset."""
    return dict(registry.preset_factory(name)())


def resolve_tree(source: str | Path | Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """Load a spec file, preset name or mapping and merge its ``base:`` chain.

    Raises:
        SpecError: a spec cannot be read (see `read_spec_file`), ``base:`` is not a string,
            the chain is a cycle or longer than `MAX_BASE_CHAIN`.
    """
    chain: list[dict[str, Any]] = []
    seen = [] if isinstance(source, Mapping) else [str(source)]
    current: str | Path | Mapping[str, Any] | None = source
    while current is not None:
        if len(chain) == MAX_BASE_CHAIN:
            problem = f"the base: chain is longer than {MAX_BASE_CHAIN} specs; shorten it"
            raise SpecError([("base", problem)])
        tree = _load_one(current, registry)
        base = tree.pop("base", None)
        chain.append(tree)
        if base is not None and not isinstance(base, str | Path):
            where = f" (in {seen[-1]})" if seen else ""  # the spec that holds it
            problem = f"must be a preset name or a spec file (a string), got {_kind(base)}{where}"
            raise SpecError([("base", problem)])
        if base is not None and str(base) in seen:
            cycle = " -> ".join((*seen, str(base)))
            raise SpecError([("base", f"presets inherit in a cycle: {cycle}")])
        if base is not None:
            seen.append(str(base))
        current = base
    merged = chain.pop()
    while chain:
        merged = deep_merge(merged, chain.pop())
    return merged


def _kind(value: Any) -> str:
    """A value's kind in YAML words, for messages."""
    names = {dict: "a mapping", list: "a list", bool: "a boolean", int: "a number"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


def _is_file(source: str | Path) -> bool:
    """Whether ``source`` names a file (a name no file can have is not one)."""
    try:
        return Path(source).is_file()
    except (OSError, ValueError):  # too long, or holding a NUL byte
        return False


def _load_one(source: str | Path | Mapping[str, Any], registry: Registry) -> dict[str, Any]:
    """One spec of a ``base:`` chain as a fresh mapping (checked by `check_size`)."""
    if isinstance(source, Mapping):
        check_size(source, "spec")
        return copy.deepcopy(dict(source))  # overrides must not change the caller's mapping
    if _is_file(source):
        return read_spec_file(Path(source))
    if str(source) in registry.names("preset"):
        tree = preset_tree(str(source), registry)
        check_size(tree, str(source))
        return tree
    presets = registry.names("preset")
    close = difflib.get_close_matches(str(source), presets, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    problem = (
        f"no such file and no preset of that name.{hint} Presets: {', '.join(presets) or '(none)'}"
    )
    raise SpecError([(str(source), problem)])


def _drop_union_tags(loc: list[str], tags: set[str]) -> list[str]:
    """Pydantic puts the chosen union member's tag in the path; users never wrote it."""
    return [
        part
        for i, part in enumerate(loc)
        if not (i >= 2 and loc[i - 2] in _KIND_OF_SECTION and part in tags)
    ]


def _describe(error: Mapping[str, Any], tags: set[str]) -> tuple[str, str]:
    loc = _drop_union_tags([str(part) for part in error["loc"]], tags)
    kind = next((_KIND_OF_SECTION[p] for p in reversed(loc) if p in _KIND_OF_SECTION), "component")
    ctx = error.get("ctx") or {}
    single_type = error["type"] == "literal_error" and loc[-1:] == ["type"]
    if single_type:  # only one type registered for this section: not a union
        loc, ctx = loc[:-1], {"tag": error.get("input"), "expected_tags": ctx.get("expected", "")}
    if error["type"] == "union_tag_invalid" or single_type:
        tag = str(ctx.get("tag"))
        expected = [
            t.strip(" '\"")
            for t in str(ctx.get("expected_tags", "")).replace(" or ", ",").split(",")
        ]
        close = difflib.get_close_matches(tag, sorted(expected), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return ".".join([*loc, "type"]), (
            f"unknown {kind} {tag!r}.{hint} Available: {', '.join(sorted(expected))}."
        )
    if error["type"] == "union_tag_not_found":
        names = str(ctx.get("expected_tags", ""))
        return ".".join([*loc, "type"]), f"missing `type`; set it to one of {names}."
    if error["type"] == "extra_forbidden":
        return ".".join(loc), "unknown field; remove it or fix its spelling."
    if error["type"] == "missing":
        return ".".join(loc), "required field is missing; add it."
    message = str(error["msg"]).removeprefix("Value error, ")
    return ".".join(loc) or "spec", message


def validate_tree(
    tree: Mapping[str, Any],
    registry: Registry,
    source: str = "spec",
    provided: Collection[str] = (),
) -> ExperimentSpec:
    """Validate a resolved mapping into an `ExperimentSpec`, raising `SpecError`.

    Infinite and NaN numbers and integers beyond 64 bits are refused anywhere in the tree
    (``lr: .inf``, a component's ``config``); validators find the registry in the validation
    context, and ``provided``: paths a run kept what it took from (`modaloom.core.portable`),
    which need not exist any more.
    """
    check_size(tree, source)
    numbers = number_problems(tree)
    if numbers:
        raise SpecError(numbers, source=source)
    spec_class = build_spec_class(registry)
    try:
        context = {"registry": registry, "provided": frozenset(provided)}
        return spec_class.model_validate(tree, context=context)
    except ValidationError as exc:
        tags = {c.name for c in registry if c.kind != "preset"}
        problems = [problem for error in exc.errors() for problem in _problems(error, tags)]
        raise SpecError(problems, source=source) from None


def _problems(error: Mapping[str, Any], tags: set[str]) -> list[tuple[str, str]]:
    """One pydantic error as located problems (a `SpecProblems` raised by a validator is a
    list of problems below the location pydantic gives)."""
    cause = (error.get("ctx") or {}).get("error")
    if not isinstance(cause, SpecProblems):
        return [_describe(error, tags)]
    loc = _drop_union_tags([str(part) for part in error["loc"]], tags)
    return [(".".join([*loc, path] if path else loc) or "spec", m) for path, m in cause.problems]


def validate_registered(
    kind: Kind, value: Any, context: Mapping[str, Any] | None, label: str
) -> BaseModel:
    """A config nested in another (an objective's ``visual_tokenizer``), validated by the config
    class that its ``type`` names among the ``kind`` entries of the registry in the validation
    context (the default registry when there is none).

    Args:
        kind: the registry kind of the nested config.
        value: the raw mapping, or an already validated config (returned as it is).
        context: pydantic's validation context (``{"registry": ...}`` under `load_spec`).
        label: the kind in words for messages (``visual tokenizer``).

    Raises:
        SpecProblems: located below the field: an unknown ``type`` (with close matches), or
            the problems of the nested config.
    """
    if isinstance(value, BaseModel):
        return value
    registry = (context or {}).get("registry")
    if registry is None:
        from modaloom.core.plugins import default_registry

        registry = default_registry()
    names = registry.names(kind)
    if not isinstance(value, Mapping) or "type" not in value:
        raise SpecProblems([("type", f"missing `type`; set it to one of {', '.join(names)}.")])
    tag = str(value["type"])
    if tag not in names:
        close = difflib.get_close_matches(tag, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(names)
        raise SpecProblems([("type", f"unknown {label} {tag!r}.{hint} Available: {listing}.")])
    config = registry.get(kind, tag).config
    assert config is not None
    try:
        return config.model_validate(value, context=context)
    except ValidationError as exc:
        raise SpecProblems([p for error in exc.errors() for p in _problems(error, set())]) from None


def load_spec(
    source: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    registry: Registry | None = None,
    provided: Collection[str] = (),
) -> ExperimentSpec:
    """Resolve presets and ``base:``, apply ``--set`` overrides, and validate.

    Args:
        source: a YAML file, a registered preset name, or an already parsed mapping.
        overrides: ``dotted.path=value`` strings applied after ``base:`` merging.
        registry: the registry to validate against (the default one when omitted).
        provided: ``pretrained`` and tokenizer paths a run being rebuilt kept what it took
            from (`modaloom.core.portable.provided_values`): they need not exist any more.

    Returns:
        An `ExperimentSpec` (an instance of the class the registry's components narrow).

    Raises:
        SpecError: listing every problem with its path and how to fix it.
    """
    if registry is None:
        from modaloom.core.plugins import default_registry

        registry = default_registry()
    tree = resolve_tree(source, registry)
    for assignment in overrides:
        apply_override(tree, assignment)
    label = str(source) if not isinstance(source, Mapping) else "spec"
    return validate_tree(tree, registry, source=label, provided=provided)


def spec_to_tree(spec: BaseModel) -> dict[str, Any]:
    """A spec as a plain mapping (what `load_spec` would accept back)."""
    return spec.model_dump(mode="json", exclude_none=False)
