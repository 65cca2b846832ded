"""Composition: turn ``spec.model`` into a `LoomModel` of named components and objectives."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar, overload

from torch import Tensor, nn

from modaloom.core.errors import ModaloomError, SpecError
from modaloom.core.features import FeatureCache
from modaloom.core.interfaces import Batch, EncoderOutput, Objective, Processor
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ComponentSpec, ModelSpec

__all__ = ["BuildContext", "FeatureCache", "LoomModel", "LoomOutput", "build_model"]

T = TypeVar("T")


@contextmanager
def building(path: str) -> Iterator[None]:
    """Turn a failure while building the spec entry at ``path`` into a `SpecError` there.

    A factory raises what its library raises (`transformers`, torch) for a config it cannot
    build; the user sees ``model.components.vision: cannot be built: ValueError: ...``, and the
    original exception stays chained for a debugger.
    """
    try:
        yield
    except ModaloomError:
        raise
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[0][:300] if lines else "(no message)"  # torch appends a C++ trace
        raise SpecError([(path, f"cannot be built: {type(exc).__name__}: {reason}")]) from exc


def objectives_spec_error(message: str) -> SpecError:
    """A `SpecError` at ``model.objectives`` (`LoomModel.objective_with`'s default error)."""
    return SpecError([("model.objectives", message)])


@dataclass
class BuildContext:
    """What factories may read while the model is built.

    Attributes:
        registry: the registry the spec was validated against.
        processors: the data spec's processors by modality (a text encoder reads the tokenizer).
        components: components built so far, by name (decoders find what they share with).
        specs: the component specs by name.
    """

    registry: Registry
    processors: Mapping[str, Processor] = field(default_factory=dict)
    components: dict[str, nn.Module] = field(default_factory=dict)
    specs: dict[str, ComponentSpec] = field(default_factory=dict)

    def output_dim(self, component: str) -> int:
        """D of a built component's `EncoderOutput`."""
        module = self.component(component)
        dim = getattr(module, "output_dim", 0)
        if not dim:
            raise SpecError([(f"model.components.{component}", "this component has no output_dim")])
        return int(dim)

    def component(self, name: str) -> nn.Module:
        """A component by name, with a spec error naming what exists when it is unknown."""
        if name not in self.components:
            raise SpecError(
                [
                    (
                        "model.objectives",
                        f"refers to component {name!r}; components are {sorted(self.components)}",
                    )
                ]
            )
        return self.components[name]


class LoomOutput(NamedTuple):
    """Result of one `LoomModel` forward pass.

    Attributes:
        loss: the weighted sum of every objective's terms, a scalar.
        terms: every ``<objective>/<term>_loss`` unweighted, detached.
    """

    loss: Tensor
    terms: dict[str, Tensor]


class LoomModel(nn.Module):
    """Named components plus weighted objectives.

    Args:
        components: encoders and decoders by name (shared modules may appear twice).
        inputs: for each encoder, the batch fields it may read, in order of preference.
        objectives: built objectives with their names and weights.
    """

    def __init__(
        self,
        components: dict[str, nn.Module],
        inputs: dict[str, tuple[str, ...]],
        objectives: list[tuple[str, float, Objective]],
    ) -> None:
        super().__init__()
        self.components = nn.ModuleDict(components)
        self.inputs = inputs
        self.objectives = nn.ModuleList([objective for _, _, objective in objectives])
        self.objective_names = [name for name, _, _ in objectives]
        self.objective_weights = [weight for _, weight, _ in objectives]

    def input_field(self, name: str, batch: Batch) -> str:
        """The batch field component ``name`` encodes in this batch."""
        for candidate in self.inputs.get(name, ()):
            if candidate in batch:
                return candidate
        raise KeyError(
            f"component {name!r} reads one of {list(self.inputs.get(name, ()))}, "
            f"but the batch holds {sorted(k for k in batch if not k.startswith('__'))}"
        )

    def encode(self, name: str, batch: Batch) -> EncoderOutput:
        """Run component ``name`` on its field of ``batch``."""
        output: EncoderOutput = self.components[name](batch[self.input_field(name, batch)])
        return output

    def forward(self, batch: Batch) -> LoomOutput:
        """Compute the objectives on one batch, encoding each component once.

        ``batch["__objectives__"]`` (names), when present, limits which objectives run (a source
        can declare the objectives its batches train, e.g. QA data only the QA objective).
        """
        features = FeatureCache(self, batch)
        active = batch.get("__objectives__")
        total: Tensor | None = None
        terms: dict[str, Tensor] = {}
        for name, weight, objective in zip(
            self.objective_names, self.objective_weights, self.objectives, strict=True
        ):
            if active is not None and name not in active:
                continue
            for term, value in objective(features).items():
                terms[f"{name}/{term}"] = value.detach()
                if not term.endswith("_loss"):
                    continue
                weighted = weight * value
                total = weighted if total is None else total + weighted
        if total is None:
            raise RuntimeError("no objective returned a `*_loss` term; add an objective")
        return LoomOutput(total, terms)

    @overload
    def objective_with(
        self,
        capability: Callable[[Objective], bool],
        name: str | None = None,
        *,
        what: str,
        fix: str = ...,
        prefer: Callable[[Any], bool] | None = ...,
        error: Callable[[str], Exception] = ...,
    ) -> Objective: ...

    @overload
    def objective_with(
        self,
        capability: type[T] | Callable[[Objective], bool],
        name: str | None = None,
        *,
        what: str,
        fix: str = ...,
        prefer: Callable[[T], bool] | None = ...,
        error: Callable[[str], Exception] = ...,
    ) -> T: ...

    def objective_with(
        self,
        capability: type | Callable[[Objective], bool],
        name: str | None = None,
        *,
        what: str,
        fix: str = "",
        prefer: Callable[[Any], bool] | None = None,
        error: Callable[[str], Exception] = objectives_spec_error,
    ) -> Any:
        """The objective named ``name``, or else the first with ``capability`` (the first that
        ``prefer`` accepts, when one does).

        Args:
            capability: a class or runtime-checkable protocol (``TextGenerator``) the objective
                is an instance of, or a test it passes.
            name: an objective's name in the spec; it must have the capability too.
            what: the capability as a verb phrase for messages (``"generate text"``).
            fix: how to get one, added to the message when none has it.
            prefer: among the capable objectives, pick the first this accepts, if any.
            error: builds the exception to raise from a message (default: a `SpecError` at
                ``model.objectives``).

        Raises:
            The exception ``error`` builds: no objective is named ``name``, the named one
            lacks the capability, or none has it; the message lists the objectives.
        """

        def capable(objective: Any) -> bool:
            if isinstance(capability, type):
                return isinstance(objective, capability)
            return capability(objective)

        names = self.objective_names
        hint = f"; {fix}" if fix else ""
        if name is not None:
            if name not in names:
                raise error(f"no objective named {name!r}; objectives are {names}")
            objective = self.objectives[names.index(name)]
            if not capable(objective):
                raise error(f"objective {name!r} cannot {what}{hint}")
            return objective
        first = None
        for objective in self.objectives:
            if capable(objective):
                if prefer is None or prefer(objective):
                    return objective
                first = objective if first is None else first
        if first is None:
            raise error(f"no objective can {what} (objectives are {names}){hint}")
        return first

    def after_optimizer_step(self) -> None:
        """Let objectives update momentum copies and the like."""
        for objective in self.objectives:
            objective.after_optimizer_step()  # type: ignore[operator]


def _component_kind(registry: Registry, spec: ComponentSpec) -> Literal["encoder", "decoder"]:
    return "encoder" if spec.type in registry.names("encoder") else "decoder"


def default_inputs(registry: Registry, spec: ComponentSpec) -> tuple[str, ...]:
    """The batch fields a component reads: its ``input``, else its type's modalities."""
    if spec.input is not None:
        return tuple(part.strip() for part in spec.input.split(","))
    modality = registry.get(_component_kind(registry, spec), spec.type).extra.get("modality", ())
    return (modality,) if isinstance(modality, str) else tuple(modality)


def _build_component(name: str, spec: ComponentSpec, ctx: BuildContext) -> nn.Module:
    kind = _component_kind(ctx.registry, spec)
    entry = ctx.registry.get(kind, spec.type)
    if spec.share_with is not None and not entry.extra.get("partial_sharing", False):
        target = ctx.components[spec.share_with]
        if ctx.specs[spec.share_with].type != spec.type:
            raise SpecError(
                [
                    (
                        f"model.components.{name}.share_with",
                        f"{spec.type!r} cannot share all "
                        f"parameters with a {ctx.specs[spec.share_with].type!r}; use the same type",
                    )
                ]
            )
        return target
    module = ctx.registry.module_factory(kind, spec.type)(spec, ctx)
    if spec.freeze:
        module.requires_grad_(False)
    return module


def _build_order(components: Mapping[str, ComponentSpec]) -> list[str]:
    order: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in trail:
            raise SpecError([("model.components", f"share_with forms a cycle: {(*trail, name)}")])
        target = components[name].share_with
        if target is not None:
            visit(target, (*trail, name))
        order.append(name)

    for name in components:
        visit(name, ())
    return order


def build_model(
    model_spec: ModelSpec, registry: Registry, processors: Mapping[str, Processor] | None = None
) -> LoomModel:
    """Build the components (in ``share_with`` order) and then the objectives.

    Args:
        model_spec: the validated ``spec.model``.
        registry: where component types are looked up.
        processors: the data processors (tokenizer facts for text components).
    """
    ctx = BuildContext(registry, processors or {}, specs=dict(model_spec.components))
    inputs: dict[str, tuple[str, ...]] = {}
    for name in _build_order(model_spec.components):
        spec = model_spec.components[name]
        with building(f"model.components.{name}"):
            ctx.components[name] = _build_component(name, spec, ctx)
        inputs[name] = default_inputs(registry, spec)
    objectives: list[tuple[str, float, Objective]] = []
    for index, spec in enumerate(model_spec.objectives):
        factory = registry.objective_factory(spec.type)
        name = spec.name or spec.type  # unique: the spec validator checks it
        with building(f"model.objectives.{index}"):
            objectives.append((name, spec.weight, factory(spec, ctx)))
    return LoomModel(ctx.components, inputs, objectives)


def count_parameters(model: nn.Module) -> int:
    """Distinct trainable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
