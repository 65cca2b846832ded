"""Registry and plugin loading: attribution, duplicates, unknown names, import errors."""

from __future__ import annotations

import sys
import types
from typing import Literal

import pluggy
import pytest

from modaloom.core.errors import DuplicateComponentError, PluginImportError, UnknownComponentError
from modaloom.core.hookspecs import hookimpl
from modaloom.core.plugins import BUILTIN_PLUGINS, load_plugins
from modaloom.core.registry import Registry
from modaloom.core.spec_models import ObjectiveSpec


def test_builtins_register_through_their_own_plugin_modules(registry: Registry) -> None:
    assert {c.plugin for c in registry} <= set(BUILTIN_PLUGINS)
    for component in registry:
        if component.config is not None:  # the config class lives beside its registration
            assert component.config.__module__ == component.plugin, component.name


def test_unknown_name_lists_available_and_close_matches(registry: Registry) -> None:
    with pytest.raises(UnknownComponentError) as info:
        registry.get("encoder", "vitt")
    message = str(info.value)
    assert message.startswith("Unknown encoder 'vitt'. Did you mean 'vit'? Available: ")
    assert "bert" in message


def test_duplicate_name_names_both_plugins() -> None:
    registry = Registry()
    registry.current_plugin = "first_plugin"
    registry.add("objective", "itc")
    registry.current_plugin = "second_plugin"
    with pytest.raises(DuplicateComponentError) as info:
        registry.add("objective", "itc")
    assert str(info.value) == (
        "objective 'itc' is registered twice: by plugin 'first_plugin' and by plugin "
        "'second_plugin'. Rename one or uninstall a plugin."
    )


def test_duplicate_across_plugins_at_load_time() -> None:
    module = types.ModuleType("dup_plugin")

    @hookimpl
    def modaloom_register_objectives(registry: Registry) -> None:
        registry.add("objective", "itc")

    module.modaloom_register_objectives = modaloom_register_objectives  # type: ignore[attr-defined]
    with pytest.raises(
        DuplicateComponentError,
        match=r"by plugin 'modaloom\.objectives\.contrastive' and by plugin 'dup_plugin'",
    ):
        load_plugins(entry_points=False, extra=[module])


def test_plugin_that_fails_to_import_is_reported() -> None:
    with pytest.raises(PluginImportError) as info:
        load_plugins(entry_points=False, extra=["no_such_plugin_module_xyz"])
    assert str(info.value) == (
        'Error importing plugin "no_such_plugin_module_xyz": '
        "ModuleNotFoundError(\"No module named 'no_such_plugin_module_xyz'\")"
    )


def test_misspelled_hook_is_caught_by_check_pending() -> None:
    module = types.ModuleType("typo_plugin")

    @hookimpl
    def modaloom_register_objectivez(registry: Registry) -> None:  # the typo is the test
        raise AssertionError("never called")

    module.modaloom_register_objectivez = modaloom_register_objectivez  # type: ignore[attr-defined]
    with pytest.raises(pluggy.PluginValidationError, match="modaloom_register_objectivez"):
        load_plugins(entry_points=False, extra=[module])


def test_entry_point_plugins_are_loaded(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    dist = tmp_path / "ep_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[modaloom]\nep_demo = ep_demo_plugin\n")
    (tmp_path / "ep_demo_plugin.py").write_text(
        "import modaloom\n"
        "@modaloom.hookimpl\n"
        "def modaloom_register_presets(registry):\n"
        "    registry.add('preset', 'ep-demo', lambda: {'base': 'clip-tiny'})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = load_plugins()
        assert registry.get("preset", "ep-demo").plugin == "ep_demo"
    finally:
        sys.modules.pop("ep_demo_plugin", None)


def test_broken_entry_point_is_reported(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    dist = tmp_path / "ep_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[modaloom]\nbroken = ep_broken_plugin\n")
    (tmp_path / "ep_broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginImportError) as info:
        load_plugins()
    assert str(info.value) == "Error importing plugin \"broken\": RuntimeError('boom')"


class _DotSpec(ObjectiveSpec):
    type: Literal["dot"] = "dot"


class _UntypedSpec(ObjectiveSpec):
    type: str = "untyped"


def test_typed_registration_takes_the_name_from_the_config_type() -> None:
    registry = Registry()

    def factory(config: _DotSpec, ctx: object) -> object:
        return ("built", config.type)

    registry.add_objective(factory, _DotSpec, description="a dot")  # type: ignore[arg-type]
    assert registry.names("objective") == ["dot"]
    assert registry.objective_factory("dot")(_DotSpec(), None) == ("built", "dot")  # type: ignore[arg-type]
    with pytest.raises(TypeError) as info:
        registry.add_objective(factory, _UntypedSpec)  # type: ignore[arg-type]
    assert str(info.value) == '_UntypedSpec must declare `type: Literal["<name>"]`'


def test_a_component_registered_without_a_factory_cannot_be_built() -> None:
    registry = Registry()
    registry.add("objective", "bare")
    with pytest.raises(TypeError) as info:
        registry.objective_factory("bare")
    assert str(info.value) == "objective 'bare' was registered without a factory"
