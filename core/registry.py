"""The component registry: an instance filled by plugins through the register hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

from pydantic import BaseModel

from modaloom.core.errors import DuplicateComponentError, UnknownComponentError

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker
    from torch import nn

    from modaloom.core.compose import BuildContext
    from modaloom.core.convert import ConvertedItem
    from modaloom.core.evaluation import Evaluator
    from modaloom.core.interfaces import (
        DataContext,
        Objective,
        PixelGrid,
        Processor,
        Source,
        VisualTokenizer,
    )

Kind = Literal[
    "modality",
    "encoder",
    "decoder",
    "objective",
    "visual_tokenizer",
    "source",
    "evaluator",
    "preset",
    "tracker",
    "converter",
]
KINDS: tuple[Kind, ...] = (
    "modality",
    "encoder",
    "decoder",
    "objective",
    "visual_tokenizer",
    "source",
    "evaluator",
    "preset",
    "tracker",
    "converter",
)

# A factory takes its own config class (a subclass of the kind's spec base), hence ``Any``.
ProcessorFactory = Callable[[Any, "DataContext"], "Processor"]
"""``(modality config, DataContext) -> Processor``."""
ModuleFactory = Callable[[Any, "BuildContext"], "nn.Module"]
"""``(component config, BuildContext) -> nn.Module`` for encoders and decoders."""
ObjectiveFactory = Callable[[Any, "BuildContext"], "Objective"]
"""``(objective config, BuildContext) -> Objective``."""
VisualTokenizerFactory = Callable[[Any, "PixelGrid"], "VisualTokenizer"]
"""``(visual tokenizer config, PixelGrid) -> VisualTokenizer`` (masked image modelling targets)."""
SourceFactory = Callable[[Any], "Source"]
"""``(source config) -> Source``."""
EvaluatorFactory = Callable[[Any], "Evaluator"]
"""``(evaluator config) -> Evaluator``."""
PresetFactory = Callable[[], Mapping[str, Any]]
"""``() -> the preset's raw spec mapping``."""
ConverterFactory = Callable[[Sequence[Path]], Iterable["ConvertedItem"]]
"""``(annotation files) -> manifest items`` of a ``data convert`` format (core/convert.py)."""
TrackerFactory = Callable[[Path, Mapping[str, Any]], "GeneralTracker"]
"""``(logging directory, train.tracker_config[name]) -> an Accelerate GeneralTracker``."""


def type_name(config: type[BaseModel]) -> str:
    """The name a config class answers to: the value of its ``type: Literal["name"]`` field.

    Raises:
        TypeError: the class has no ``type`` field with exactly one literal value.
    """
    field_info = config.model_fields.get("type")
    names = get_args(field_info.annotation) if field_info is not None else ()
    if len(names) != 1 or not isinstance(names[0], str):
        raise TypeError(f'{config.__name__} must declare `type: Literal["<name>"]`')
    return names[0]


@dataclass(frozen=True)
class Component:
    """One registered component.

    Attributes:
        kind: what it is (``encoder``, ``objective``, ...).
        name: the ``type:`` value a spec uses to pick it.
        factory: builds the runtime object; its signature depends on the kind.
        config: the pydantic model of its spec section (``None`` for presets).
        plugin: the plugin that registered it.
        description: one line for ``modaloom plugins``.
        extra: kind-specific facts (for example the modality an encoder consumes).
    """

    kind: Kind
    name: str
    factory: Callable[..., Any] | None
    config: type[BaseModel] | None
    plugin: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Components by kind and name, each remembering the plugin that added it."""

    def __init__(self) -> None:
        self._items: dict[Kind, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.current_plugin = "<direct>"

    def add(
        self,
        kind: Kind,
        name: str,
        factory: Callable[..., Any] | None = None,
        config: type[BaseModel] | None = None,
        *,
        description: str = "",
        **extra: Any,
    ) -> Component:
        """Register a component under ``(kind, name)``.

        Raises:
            DuplicateComponentError: the name is taken; the message names both plugins.
        """
        if kind not in self._items:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {', '.join(KINDS)}")
        existing = self._items[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} "
                f"and by plugin {self.current_plugin!r}. Rename one or uninstall a plugin."
            )
        component = Component(kind, name, factory, config, self.current_plugin, description, extra)
        self._items[kind][name] = component
        return component

    def add_modality(
        self,
        name: str,
        factory: ProcessorFactory,
        config: type[BaseModel],
        *,
        description: str = "",
        **extra: Any,
    ) -> Component:
        """Register a modality: the ``data.<name>`` settings and its processor factory."""
        return self.add("modality", name, factory, config, description=description, **extra)

    def add_encoder(
        self,
        factory: ModuleFactory,
        config: type[BaseModel],
        *,
        modality: str | tuple[str, ...],
        description: str = "",
        **extra: Any,
    ) -> Component:
        """Register an encoder under its config's ``type``; ``modality`` is the batch field
        (or fields) it reads by default."""
        return self._add_typed("encoder", factory, config, description, modality=modality, **extra)

    def add_decoder(
        self,
        factory: ModuleFactory,
        config: type[BaseModel],
        *,
        modality: str,
        description: str = "",
        **extra: Any,
    ) -> Component:
        """Register a decoder under its config's ``type``."""
        return self._add_typed("decoder", factory, config, description, modality=modality, **extra)

    def add_objective(
        self,
        factory: ObjectiveFactory,
        config: type[BaseModel],
        *,
        description: str = "",
        **extra: Any,
    ) -> Component:
        """Register an objective under its config's ``type``."""
        return self._add_typed("objective", factory, config, description, **extra)

    def add_visual_tokenizer(
        self,
        factory: VisualTokenizerFactory,
        config: type[BaseModel],
        *,
        description: str = "",
        **extra: Any,
    ) -> Component:
        """Register a visual tokenizer (the discrete targets of masked image modelling, COTS's
        CMVM) under its config's ``type``."""
        return self._add_typed("visual_tokenizer", factory, config, description, **extra)

    def add_source(
        self,
        factory: SourceFactory,
        config: type[BaseModel],
        *,
        description: str = "",
        **extra: Any,
    ) -> Component:
        """Register a data source under its config's ``type``."""
        return self._add_typed("source", factory, config, description, **extra)

    def add_evaluator(
        self,
        factory: EvaluatorFactory,
        config: type[BaseModel],
        *,
        description: str = "",
        **extra: Any,
    ) -> Component:
        """Register an evaluator under its config's ``type``."""
        return self._add_typed("evaluator", factory, config, description, **extra)

    def add_preset(
        self, name: str, factory: PresetFactory, *, description: str = "", **extra: Any
    ) -> Component:
        """Register a named spec; ``factory`` returns its raw mapping."""
        return self.add("preset", name, factory, description=description, **extra)

    def add_tracker(
        self, name: str, factory: TrackerFactory, *, description: str = "", **extra: Any
    ) -> Component:
        """Register an experiment tracker that ``train.log_with`` names (beside Accelerate's)."""
        return self.add("tracker", name, factory, description=description, **extra)

    def add_converter(
        self, name: str, factory: ConverterFactory, *, description: str = "", **extra: Any
    ) -> Component:
        """Register a ``modaloom data convert`` format: ``factory`` reads its annotation files
        and yields `modaloom.core.convert.ConvertedItem`s (raising `DataError` for a malformed
        file)."""
        return self.add("converter", name, factory, description=description, **extra)

    def _add_typed(
        self,
        kind: Kind,
        factory: Callable[..., Any],
        config: type[BaseModel],
        description: str,
        **extra: Any,
    ) -> Component:
        return self.add(kind, type_name(config), factory, config, description=description, **extra)

    def processor_factory(self, name: str) -> ProcessorFactory:
        """The processor factory of modality ``name``."""
        return cast("ProcessorFactory", self._factory("modality", name))

    def module_factory(self, kind: Literal["encoder", "decoder"], name: str) -> ModuleFactory:
        """The factory of encoder or decoder ``name``."""
        return cast("ModuleFactory", self._factory(kind, name))

    def objective_factory(self, name: str) -> ObjectiveFactory:
        """The factory of objective ``name``."""
        return cast("ObjectiveFactory", self._factory("objective", name))

    def visual_tokenizer_factory(self, name: str) -> VisualTokenizerFactory:
        """The factory of visual tokenizer ``name``."""
        return cast("VisualTokenizerFactory", self._factory("visual_tokenizer", name))

    def source_factory(self, name: str) -> SourceFactory:
        """The factory of source ``name``."""
        return cast("SourceFactory", self._factory("source", name))

    def evaluator_factory(self, name: str) -> EvaluatorFactory:
        """The factory of evaluator ``name``."""
        return cast("EvaluatorFactory", self._factory("evaluator", name))

    def preset_factory(self, name: str) -> PresetFactory:
        """The loader of preset ``name``."""
        return cast("PresetFactory", self._factory("preset", name))

    def tracker_factory(self, name: str) -> TrackerFactory:
        """The factory of tracker ``name``."""
        return cast("TrackerFactory", self._factory("tracker", name))

    def converter_factory(self, name: str) -> ConverterFactory:
        """The reader of ``data convert`` format ``name``."""
        return cast("ConverterFactory", self._factory("converter", name))

    def _factory(self, kind: Kind, name: str) -> Callable[..., Any]:
        component = self.get(kind, name)
        if component.factory is None:
            raise TypeError(f"{kind} {name!r} was registered without a factory")
        return component.factory

    def get(self, kind: Kind, name: str) -> Component:
        """Return a component, or raise `UnknownComponentError` with close matches."""
        try:
            return self._items[kind][name]
        except KeyError:
            raise UnknownComponentError(kind, name, self._items[kind]) from None

    def names(self, kind: Kind) -> list[str]:
        """Names registered under ``kind``, sorted."""
        return sorted(self._items[kind])

    def of_kind(self, kind: Kind) -> list[Component]:
        """Components registered under ``kind``, sorted by name."""
        return [self._items[kind][name] for name in self.names(kind)]

    def __iter__(self) -> Iterator[Component]:
        for kind in KINDS:
            yield from self.of_kind(kind)
