"""Cross-references between the sections of a spec, each checked with its full path.

A spec names things it defines elsewhere: objectives and evaluators name components
(``a: vision``, MGA groups, an ITM's ``text``), decoders (``decoder: align``) and objectives
(``rerank: itm``); stages name sources and ``component.action``s; sources name objectives. The
config classes declare theirs (`ObjectiveSpec.references`, `EvaluatorSpec.references`, as
`Reference`); `reference_problems` resolves every one against the spec, so a misspelt or deleted
name is one located problem (``model.objectives.0.a: 'visionn' is not a component; use one of
['text', 'vision']``) at validate time, never a failure at train time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from modaloom.core.spec_models import Reference

if TYPE_CHECKING:
    from modaloom.core.registry import Registry
    from modaloom.core.spec_models import DataSpec, ExperimentSpec, ModelSpec

Problem = tuple[str, str]


def reference_problems(spec: ExperimentSpec, registry: Registry | None) -> list[Problem]:
    """Every unresolved name of ``spec``, as (path, message).

    Args:
        spec: a spec whose fields are valid.
        registry: tells decoders from encoders (``decoder:`` references); ``None`` skips that.
    """
    model = spec.model
    objectives = [o.name or o.type for o in model.objectives]
    declared = [
        (f"model.objectives.{i}", objective.references())
        for i, objective in enumerate(model.objectives)
    ] + [(f"eval.{i}", evaluator.references()) for i, evaluator in enumerate(spec.eval)]
    problems = [
        problem
        for prefix, references in declared
        for reference in references
        for problem in _resolve(prefix, reference, spec, registry)
    ]
    return [
        *_share_problems(model),
        *problems,
        *_duplicate_objectives(objectives),
        *_source_problems(spec.data, objectives),
        *_stage_problems(spec),
        *_eval_problems(spec),
    ]


def _resolve(
    prefix: str, reference: Reference, spec: ExperimentSpec, registry: Registry | None
) -> list[Problem]:
    path = f"{prefix}.{reference.path}" if reference.path else prefix
    name = reference.name
    if reference.kind == "objective":
        types = {o.name or o.type: o.type for o in spec.model.objectives}
        return _named(path, name, types, "an objective", reference.types)
    components = {name: c.type for name, c in spec.model.components.items()}
    if reference.kind == "component" or registry is None:
        return _named(path, name, components, "a component", reference.types)
    decoders = set(registry.names("decoder"))
    return _named(path, name, components, "a component", tuple(decoders), what="a decoder")


def _named(
    path: str,
    name: str,
    types: dict[str, str],
    kind: str,
    allowed: Sequence[str],
    what: str = "",
) -> list[Problem]:
    """``name`` must be a key of ``types`` whose type is in ``allowed`` (any when empty)."""
    if name not in types:
        return [(path, f"{name!r} is not {kind}; use one of {sorted(types)}")]
    if allowed and types[name] not in allowed:
        fitting = sorted(n for n, t in types.items() if t in allowed)
        wanted = what or " or ".join(repr(t) for t in sorted(allowed))
        return [(path, f"{name!r} is a {types[name]!r}, not {wanted}; use one of {fitting}")]
    return []


def _share_problems(model: ModelSpec) -> list[Problem]:
    names = sorted(model.components)
    return [
        (
            f"model.components.{name}.share_with",
            f"{c.share_with!r} is not a component; use one of {names}",
        )
        for name, c in model.components.items()
        if c.share_with is not None and c.share_with not in model.components
    ]


def _duplicate_objectives(names: list[str]) -> list[Problem]:
    return [
        (
            f"model.objectives.{i}",
            f"is the second objective named {name!r}; give it a distinct `name:`",
        )
        for i, name in enumerate(names)
        if name in names[:i]
    ]


def _source_problems(data: DataSpec, objectives: list[str]) -> list[Problem]:
    return [
        (
            f"data.sources.{name}.objectives.{k}",
            f"{o!r} is not an objective; use one of {objectives}",
        )
        for name, source in data.sources.items()
        for k, o in enumerate(source.objectives or [])
        if o not in objectives
    ]


def _stage_problems(spec: ExperimentSpec) -> list[Problem]:
    """Stage sources, and the component of each ``component.action`` (the action itself is
    checked when the model is built: `modaloom.core.build_check`)."""
    sources, components = sorted(spec.data.sources), sorted(spec.model.components)
    problems: list[Problem] = []
    for i, stage in enumerate(spec.train.stages):
        problems += [
            (f"train.stages.{i}.sources.{k}", f"{s!r} is not in data.sources; use one of {sources}")
            for k, s in enumerate(stage.sources or [])
            if s not in spec.data.sources
        ]
        for k, action in enumerate(stage.actions):
            component, dot, verb = action.partition(".")
            path = f"train.stages.{i}.actions.{k}"
            if not (dot and component and verb):
                problems.append((path, f"{action!r} is not component.action, e.g. vision.inflate"))
            elif component not in spec.model.components:
                problems.append(
                    (path, f"{component!r} is not a component; use one of {components}")
                )
    return problems


def _eval_problems(spec: ExperimentSpec) -> list[Problem]:
    data = spec.data
    known = sorted({*data.eval_sources, *data.sources})
    problems = [
        (
            f"eval.{i}.source",
            f"{e.source!r} is not in data.eval_sources or data.sources; use one of {known}",
        )
        for i, e in enumerate(spec.eval)
        if e.source not in data.eval_sources and e.source not in data.sources
    ]
    if spec.train.eval_every is not None and not spec.eval:
        problems.append(("train.eval_every", "is set but there is no `eval:` section; add one"))
    return problems
