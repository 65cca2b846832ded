"""Plugin loading: built-ins and entry points through one pluggy manager, once, explicitly."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from types import ModuleType

import pluggy

from modaloom.core import hookspecs
from modaloom.core.errors import PluginImportError
from modaloom.core.registry import Registry

ENTRY_POINT_GROUP = "modaloom"

BUILTIN_PLUGINS: tuple[str, ...] = (
    "modaloom.modalities.text",
    "modaloom.modalities.image",
    "modaloom.modalities.video",
    "modaloom.modalities.audio",
    "modaloom.modalities.timesformer",
    "modaloom.modalities.frame_mean",
    "modaloom.modalities.audio_encoder",
    "modaloom.modalities.clip_vision",
    "modaloom.modalities.text_decoder",
    "modaloom.objectives.contrastive",
    "modaloom.objectives.queue_contrastive",
    "modaloom.objectives.cots",
    "modaloom.objectives.matching",
    "modaloom.objectives.lm",
    "modaloom.objectives.mgc",
    "modaloom.objectives.fine_grained",
    "modaloom.objectives.visual_tokenizer",
    "modaloom.objectives.dvae",
    "modaloom.objectives.vq_tokenizer",
    "modaloom.objectives.mvlm",
    "modaloom.plugins.sources.jsonl",
    "modaloom.plugins.sources.webdataset",
    "modaloom.plugins.sources.labels",
    "modaloom.plugins.sources.digits_av",
    "modaloom.plugins.presets",
    "modaloom.plugins.evaluators.retrieval",
    "modaloom.plugins.evaluators.zeroshot",
    "modaloom.plugins.evaluators.captioning",
    "modaloom.plugins.evaluators.qa",
    "modaloom.plugins.recipes.karpathy",
    "modaloom.plugins.recipes.msrvtt",
    "modaloom.plugins.recipes.webvid",
    "modaloom.plugins.recipes.audiocaps",
    "modaloom.plugins.recipes.vqav2",
    "modaloom.plugins.recipes.valor32k",
)

REGISTER_HOOKS: tuple[str, ...] = (
    "modaloom_register_modalities",
    "modaloom_register_objectives",
    "modaloom_register_sources",
    "modaloom_register_evaluators",
    "modaloom_register_presets",
    "modaloom_register_trackers",
    "modaloom_register_converters",
)

_default: Registry | None = None


def _import_plugin(name: str, target: str) -> ModuleType:
    try:
        return importlib.import_module(target)
    except Exception as exc:  # any failure inside a plugin is reported the same way
        raise PluginImportError(f'Error importing plugin "{name}": {exc!r}') from exc


def make_plugin_manager(
    *, entry_points: bool = True, extra: Sequence[ModuleType | str] = ()
) -> pluggy.PluginManager:
    """Build a pluggy manager with the built-ins, installed entry points and ``extra`` plugins.

    Args:
        entry_points: also load plugins from the ``modaloom`` entry-point group.
        extra: plugin modules (or importable module names) given explicitly.

    Raises:
        PluginImportError: a plugin failed to import; the message names it and the cause.
        pluggy.PluginValidationError: a plugin implements a hook that does not exist.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for target in BUILTIN_PLUGINS:
        pm.register(_import_plugin(target, target), name=target)
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is None:
                try:
                    plugin = ep.load()
                except Exception as exc:
                    raise PluginImportError(f'Error importing plugin "{ep.name}": {exc!r}') from exc
                pm.register(plugin, name=ep.name)
    for item in extra:
        module = _import_plugin(item, item) if isinstance(item, str) else item
        pm.register(module, name=module.__name__)
    pm.check_pending()
    return pm


def fill_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every register hook, one implementation at a time, so each entry knows its plugin."""
    registry = Registry()
    for hook_name in REGISTER_HOOKS:
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order
            registry.current_plugin = impl.plugin_name
            impl.function(registry=registry)
    registry.current_plugin = "<direct>"
    return registry


def load_plugins(*, entry_points: bool = True, extra: Sequence[ModuleType | str] = ()) -> Registry:
    """Load the built-in and installed plugins into a new `Registry`."""
    return fill_registry(make_plugin_manager(entry_points=entry_points, extra=extra))


def default_registry() -> Registry:
    """The process-wide registry of built-ins plus installed plugins, loaded on first call."""
    global _default
    if _default is None:
        _default = load_plugins()
    return _default
