"""The component registry: an instance filled by plugins through the register hooks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from modaloom.core.errors import DuplicateComponentError, UnknownComponentError

Kind = Literal["modality", "encoder", "decoder", "objective", "source", "evaluator", "preset"]
KINDS: tuple[Kind, ...] = (
    "modality",
    "encoder",
    "decoder",
    "objective",
    "source",
    "evaluator",
    "preset",
)


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

    def remove_plugin(self, plugin: str) -> None:
        """Forget everything one plugin registered (used when unregistering test fixtures)."""
        for table in self._items.values():
            for name in [n for n, c in table.items() if c.plugin == plugin]:
                del table[name]
