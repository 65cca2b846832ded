"""Specs: presets with base inheritance, overrides, and SpecError paths with fixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from modaloom.core.errors import SpecError
from modaloom.core.registry import Registry
from modaloom.core.spec import apply_override, deep_merge, load_spec


def test_preset_loads_with_overrides(registry: Registry, shapes_manifest: Path) -> None:
    spec = load_spec(
        "clip-tiny",
        [
            f"data.sources.train.path={shapes_manifest}",
            "train.steps=7",
            "model.objectives.0.temperature=0.1",
        ],
        registry,
    )
    assert spec.train.steps == 7
    assert spec.model.objectives[0].temperature == 0.1
    assert spec.model.components["vision"].type == "vit"
    assert spec.data.image.size == 32


def test_base_inheritance_merges_mappings(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "base: clip-tiny\ndata:\n  batch_size: 4\n  sources:\n"
        "    train: {type: jsonl, path: x.jsonl}\ntrain: {steps: 3}\n"
    )
    spec = load_spec(path, registry=registry)
    assert spec.data.batch_size == 4
    assert spec.data.text.max_length == 16  # inherited from the preset
    assert spec.train.steps == 3


def test_misspelled_objective_gives_path_and_closest_name(registry: Registry) -> None:
    with pytest.raises(SpecError) as info:
        load_spec("clip-tiny", ["model.objectives.0.type=itx"], registry)
    assert (
        "model.objectives.0.type",
        "unknown objective 'itx'. Did you mean 'itm', 'itc'? Available: "
        + ", ".join(registry.names("objective"))
        + ".",
    ) in info.value.problems


def test_every_problem_is_listed_with_its_path(registry: Registry) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(
            "clip-tiny",
            [
                "model.objectives.0.temperature=0.9",
                "train.optimizer.lr=-1",
                "model.components.text.colour=red",
            ],
            registry,
        )
    paths = [path for path, _ in info.value.problems]
    assert paths == [
        "model.components.text.colour",
        "model.objectives.0",
        "train.optimizer.lr",
    ] or sorted(paths) == sorted(
        ["model.components.text.colour", "model.objectives.0", "train.optimizer.lr"]
    )
    messages = dict(info.value.problems)
    assert (
        messages["model.components.text.colour"] == "unknown field; remove it or fix its spelling."
    )
    assert messages["model.objectives.0"] == (
        "temperature 0.9 must lie in temperature_range (0.001, 0.5)"
    )
    assert str(info.value).startswith("clip-tiny is invalid (3 problems):\n  ")


def test_cross_references_are_checked(registry: Registry) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(
            "clip-tiny",
            [
                "train.steps=null",
                "train.stages=[{name: a, steps: 2, sources: [trian]}]",
                "model.components.text.share_with=vison",
            ],
            registry,
        )
    assert info.value.problems == [
        (
            "model.components.text.share_with",
            "'vison' is not a component; use one of ['text', 'vision']",
        ),
        ("train.stages.0.sources.0", "'trian' is not in data.sources; use one of ['train']"),
    ]


def test_unknown_spec_name_suggests_presets(registry: Registry) -> None:
    with pytest.raises(SpecError) as info:
        load_spec("clip-tinny", registry=registry)
    assert info.value.problems[0][1].startswith(
        "no such file and no preset of that name. Did you mean clip-tiny, cots-tiny, valor-tiny? "
    )


def test_steps_or_stages_rule(registry: Registry) -> None:
    with pytest.raises(SpecError) as info:
        load_spec("clip-tiny", ["train.stages=[{name: a, steps: 2}]"], registry)
    assert info.value.problems == [
        ("train", "give either `steps: N` or a list of `stages`, not both or neither")
    ]


def test_override_helpers() -> None:
    tree = {"a": {"b": [1, {"c": 2}]}}
    apply_override(tree, "a.b.1.c=5")
    apply_override(tree, "a.new.deep=[1, 2]")
    assert tree == {"a": {"b": [1, {"c": 5}], "new": {"deep": [1, 2]}}}
    with pytest.raises(SpecError, match="is not KEY=VALUE"):
        apply_override(tree, "novalue")
    assert deep_merge({"x": {"y": 1, "z": 2}}, {"x": {"y": 3}}) == {"x": {"y": 3, "z": 2}}


def test_bad_yaml_is_a_spec_error(registry: Registry, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path, registry=registry)


def test_a_mapping_of_another_type_replaces_the_base_one(
    registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "shards.yaml"
    path.write_text(
        "base: clip-tiny\ndata:\n  sources:\n    train:\n      type: webdataset\n"
        "      urls: shards/train-{000000..000003}.tar\n      fields: {image: jpg, text: txt}\n"
    )
    spec = load_spec(path, registry=registry)
    source = spec.data.sources["train"]
    assert source.type == "webdataset" and not hasattr(source, "path")


def test_null_removes_a_base_mapping_and_sets_a_value_to_null(
    registry: Registry, tmp_path: Path
) -> None:
    path = tmp_path / "two.yaml"
    path.write_text("base: clip-tiny\ndata:\n  sources:\n    extra: {type: jsonl, path: b.jsonl}\n")
    spec = load_spec(path, ["data.sources.train=null", "train.max_grad_norm=null"], registry)
    assert list(spec.data.sources) == ["extra"]
    assert spec.train.max_grad_norm is None
    path.write_text(
        "base: clip-tiny\ndata:\n  sources:\n    train: null\n    b: {type: jsonl, path: b.jsonl}\n"
    )
    assert list(load_spec(path, registry=registry).data.sources) == ["b"]


def test_set_merges_a_mapping_like_base_does() -> None:
    tree = {"s": {"t": {"type": "jsonl", "path": "a", "weight": 2}}}
    apply_override(tree, "s.t={path: b}")
    assert tree == {"s": {"t": {"type": "jsonl", "path": "b", "weight": 2}}}
    apply_override(tree, "s.t={type: webdataset, urls: x.tar}")
    assert tree == {"s": {"t": {"type": "webdataset", "urls": "x.tar"}}}
    apply_override(tree, "s.t=null")
    assert tree == {"s": {}}
