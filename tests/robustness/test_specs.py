"""Specs from a careless or hostile user: every case is one located message and exit 2.

Issue 12 section 5: `validate` means the model builds (component configs are checked against
their `transformers` config class, the model is built on the meta device), every cross-reference
is checked with its full path, and malformed input (encodings, nesting, aliases, duplicate keys,
non-finite numbers) never gives a traceback. The property-based fuzz over the presets is in
test_spec_fuzz.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from modaloom.core.build_check import check_build
from modaloom.core.cli import main
from modaloom.core.errors import SpecError
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec

COMPONENTS_CLIP = "['text', 'vision']"
COMPONENTS_VALOR = "['audio', 'decoder', 'text', 'vision']"
COMPONENTS_OMNIVL = "['align', 'gen', 'text', 'vision']"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``modaloom ARGV``."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """stderr of a command that must exit 2 with one message and no traceback."""
    status, out, err = run_cli(capsys, *argv)
    assert (status, out) == (2, "")
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def problems(registry: Registry, preset: str, *overrides: str) -> list[tuple[str, str]]:
    """The located problems `load_spec` (then `check_build`) reports for a preset."""
    with pytest.raises(SpecError) as info:
        check_build(load_spec(preset, overrides, registry), registry)
    return info.value.problems


# ------------------------------------------------------------------ component configs


@pytest.mark.parametrize(
    ("override", "path", "message"),
    [
        (
            "text.config.hidden_size=abc",
            "text.config.hidden_size",
            "not a valid BertConfig value: TypeError: Field 'hidden_size' expected int, got str "
            "(value: 'abc')",
        ),
        (
            "text.config.num_attention_heads=0",
            "text.config.num_attention_heads",
            "must be an integer in 1..1,048,576, got 0",
        ),
        (
            "vision.config.patch_size=-1",
            "vision.config.patch_size",
            "must be an integer in 1..1,048,576, got -1",
        ),
        (
            "text.config.hidden_size=66",
            "text.config.hidden_size",
            "hidden_size 66 is not a multiple of num_attention_heads 4",
        ),
        (
            "text.config.num_hidden_layers=100000",
            "text.config.num_hidden_layers",
            "must be an integer in 1..1,024, got 100000",
        ),
        (
            "text.config.num_hiden_layers=3",
            "text.config.num_hiden_layers",
            "is not a field of this component's transformers config; did you mean "
            "'num_hidden_layers'?",
        ),
        (
            "text.config.hidden_dropout_prob=1.5",
            "text.config.hidden_dropout_prob",
            "must be a number in [0, 1], got 1.5",
        ),
        (
            "text.config.attn_implementation=eager",
            "text.config.attn_implementation",
            "is set by modaloom; remove it",
        ),
        (
            "vision.config.image_size=4",
            "vision.config.patch_size",
            "patch_size 8 exceeds image_size 4",
        ),
    ],
)
def test_component_config_is_checked_against_its_transformers_class(
    registry: Registry, override: str, path: str, message: str
) -> None:
    found = problems(registry, "clip-tiny", f"model.components.{override}")
    assert found == [(f"model.components.{path}", message)]


def test_what_only_a_build_finds_is_located_at_the_component(registry: Registry) -> None:
    found = problems(registry, "valor-tiny", "model.components.decoder.share_with=vision")
    assert len(found) == 1 and found[0][0] == "model.components.decoder"
    assert found[0][1].startswith("cannot be built: ")


def test_validate_builds_on_the_meta_device(capsys: pytest.CaptureFixture[str]) -> None:
    for preset in ("valor-tiny", "omnivl-tiny", "cots-tiny", "valor", "omnivl", "cots"):
        status, out, err = run_cli(capsys, "validate", preset)
        assert (status, err) == (0, "")
        assert out.startswith(f"{preset}: valid (")
        assert out.splitlines()[1:] == ["the model builds (checked on the meta device)"]


# ------------------------------------------------------------------ cross-references


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        (
            "clip-tiny",
            ["model.objectives.0.a=visionn"],
            [
                (
                    "model.objectives.0.a",
                    f"'visionn' is not a component; use one of {COMPONENTS_CLIP}",
                )
            ],
        ),
        (
            "valor-tiny",
            ["model.objectives.0.groups=[[text, vision], [text, [vision, audi]]]"],
            [
                (
                    "model.objectives.0.groups.1.1.1",
                    f"'audi' is not a component; use one of {COMPONENTS_VALOR}",
                )
            ],
        ),
        (
            "valor-tiny",
            ["model.objectives.1.decoder=text"],
            [
                (
                    "model.objectives.1.decoder",
                    "'text' is a 'bert', not a decoder; use one of ['decoder']",
                )
            ],
        ),
        (
            "omnivl-tiny",
            ["model.objectives.1.text=textn"],
            [
                (
                    "model.objectives.1.text",
                    f"'textn' is not a component; use one of {COMPONENTS_OMNIVL}",
                )
            ],
        ),
        (
            "omnivl-tiny",
            ["train.stages.1.actions=[visionn.inflate, inflate]"],
            [
                (
                    "train.stages.1.actions.0",
                    f"'visionn' is not a component; use one of {COMPONENTS_OMNIVL}",
                ),
                (
                    "train.stages.1.actions.1",
                    "'inflate' is not component.action, e.g. vision.inflate",
                ),
            ],
        ),
        (
            "omnivl-tiny",
            ["train.stages.1.actions=[text.inflate]"],
            [
                (
                    "train.stages.1.actions.0",
                    "unknown action 'text.inflate'; available: vision.inflate",
                )
            ],
        ),
        (
            "valor-tiny",
            ["eval.0.query=[txt]", "eval.4.objective=mgcc"],
            [
                ("eval.0.query.0", f"'txt' is not a component; use one of {COMPONENTS_VALOR}"),
                ("eval.4.objective", "'mgcc' is not an objective; use one of ['mga', 'mgc', 'qa']"),
            ],
        ),
        (
            "omnivl-tiny",
            ["eval.0.rerank=univlc"],
            [("eval.0.rerank", "'univlc' is a 'univlc', not 'itm'; use one of ['itm']")],
        ),
    ],
)
def test_every_cross_reference_is_located(
    registry: Registry, preset: str, overrides: list[str], expected: list[tuple[str, str]]
) -> None:
    assert problems(registry, preset, *overrides) == expected


def test_a_deleted_component_still_referenced(registry: Registry) -> None:
    found = problems(registry, "valor-tiny", "model.components.audio=null")
    missing = "'audio' is not a component; use one of ['decoder', 'text', 'vision']"
    assert found == [
        (path, missing)
        for path in (
            "model.objectives.0.groups.1.1",
            "model.objectives.0.groups.2.1.1",
            "model.objectives.1.groups.1.1",
            "model.objectives.1.groups.2.1.1",
            "model.objectives.2.groups.0.1.1",
            "eval.0.target.1",
            "eval.2.target.0",
            "eval.4.group.1.1",
            "eval.5.group.1.1",
        )
    ]


# ------------------------------------------------------------------ malformed input


def write(path: Path, text: str | bytes) -> str:
    """Write a spec file and return its name."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def test_spec_files_in_other_encodings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    latin = write(tmp_path / "latin.yaml", "base: clip-tiny\n# caf\xe9\n".encode("latin-1"))
    assert refused(capsys, "validate", latin) == (
        f"error: {latin} is invalid (1 problem):\n"
        f"  {latin}: is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8\n"
    )
    utf16 = write(tmp_path / "utf16.yaml", "base: clip-tiny\n".encode("utf-16"))
    assert refused(capsys, "validate", utf16) == (
        f"error: {utf16} is invalid (1 problem):\n  {utf16}: is UTF-16 encoded; save it as UTF-8\n"
    )


def test_deep_nesting_and_long_base_chains(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    deep = write(tmp_path / "deep.yaml", "model: " + "[" * 3000 + "]" * 3000 + "\n")
    assert refused(capsys, "validate", deep) == (
        f"error: {deep} is invalid (1 problem):\n  {deep}: nesting deeper than 64 levels at "
        "line 1; a spec is a few levels deep\n"
    )
    write(tmp_path / "s0.yaml", "base: clip-tiny\n")
    for index in range(1, 1200):
        write(tmp_path / f"s{index}.yaml", f"base: {tmp_path / f's{index - 1}.yaml'}\n")
    assert refused(capsys, "validate", str(tmp_path / "s1199.yaml")) == (
        "error: spec is invalid (1 problem):\n"
        "  base: the base: chain is longer than 64 specs; shorten it\n"
    )


def test_base_must_be_a_string(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = write(tmp_path / "base.yaml", "base: [clip-tiny]\n")
    assert refused(capsys, "validate", spec) == (
        "error: spec is invalid (1 problem):\n"
        f"  base: must be a preset name or a spec file (a string), got a list (in {spec})\n"
    )


def test_bad_yaml_in_a_set_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert refused(capsys, "validate", "clip-tiny", "--set", "train.steps=[1, 2") == (
        "error: --set train.steps is invalid (1 problem):\n  --set train.steps: not valid YAML: "
        "while parsing a flow sequence: expected ',' or ']', but got '<stream end>' "
        "(line 1, column 6)\n"
    )


@pytest.mark.parametrize(
    ("override", "path", "message"),
    [
        ("train.seed=4294967296", "train.seed", "Input should be less than or equal to 4294967295"),
        ("train.seed=-1", "train.seed", "Input should be greater than or equal to 0"),
        ("train.optimizer.lr=.inf", "train.optimizer.lr", "inf is not a finite number; give one"),
        (
            "data.audio.clip_seconds=.inf",
            "data.audio.clip_seconds",
            "inf is not a finite number; give one",
        ),
        (
            "model.components.text.config.layer_norm_eps=.nan",
            "model.components.text.config.layer_norm_eps",
            "nan is not a finite number; give one",
        ),
        (
            "model.objectives.0.embed_dim=18446744073709551616",
            "model.objectives.0.embed_dim",
            "18446744073709551616 is too large; integers in a spec fit in 64 bits",
        ),
    ],
)
def test_out_of_range_and_non_finite_numbers(
    capsys: pytest.CaptureFixture[str], override: str, path: str, message: str
) -> None:
    assert refused(capsys, "validate", "valor-tiny", "--set", override) == (
        f"error: valor-tiny is invalid (1 problem):\n  {path}: {message}\n"
    )


def test_duplicate_keys_are_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = write(tmp_path / "dup.yaml", "base: clip-tiny\ntrain:\n  steps: 5\n  steps: 50\n")
    assert refused(capsys, "validate", spec) == (
        f"error: {spec} is invalid (1 problem):\n"
        f"  {spec}: duplicate key 'steps' on line 4 (first on line 3); keep one\n"
    )


def test_an_alias_bomb_in_a_component_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lines = ["base: clip-tiny", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines += ["model:", "  components:", "    text: {type: bert, config: {label2id: *a8}}"]
    spec = write(tmp_path / "bomb.yaml", "\n".join(lines) + "\n")
    assert refused(capsys, "validate", spec) == (
        f"error: {spec} is invalid (1 problem):\n  {spec}: expands to more than 100,000 values "
        "(YAML aliases repeated?); a spec this large is refused\n"
    )


def test_data_pack_on_a_latin1_manifest_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b'{"text": "ok"}\n' + '{"text": "caf\xe9"}\n'.encode("latin-1"))
    assert refused(capsys, "data", "pack", str(manifest), "--output", str(tmp_path / "out")) == (
        f"error: manifest '{manifest}' line 2 is not UTF-8 (byte 0xe9 at column 14); save the "
        "file as UTF-8\n"
    )


def test_data_inspect_with_unbalanced_braces(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"{tmp_path}/shard-{{000000..000003.tar"
    assert refused(capsys, "data", "inspect", url) == (
        f"error: '{url}' has unbalanced braces; write a range like shard-{{000000..000009}}.tar\n"
    )
    huge = f"{tmp_path}/shard-{{0..99999999}}.tar"
    assert refused(capsys, "data", "inspect", huge) == (
        f"error: '{huge}' expands to more than 1,000,000 shards\n"
    )


def test_schema_into_a_missing_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    target = tmp_path / "no" / "schema.json"
    assert refused(capsys, "schema", "--output", str(target)) == (
        f"error: cannot write {target}: No such file or directory; create the folder first\n"
    )
