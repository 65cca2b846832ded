"""The CLI: clear one-line errors with a non-zero exit, plugin listing, schema, train."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from modaloom.core.cli import main
from modaloom.core.plugins import BUILTIN_PLUGINS, default_registry


def test_validate_misspelled_objective_exits_non_zero(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "typo.yaml"
    spec.write_text("base: clip-tiny\nmodel:\n  objectives:\n    - {type: itcc}\n")
    assert main(["validate", str(spec)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    names = ", ".join(default_registry().names("objective"))
    assert (
        f"  model.objectives.0.type: unknown objective 'itcc'. Did you mean 'itc', 'itm'? "
        f"Available: {names}.\n"
    ) in captured.err
    assert "Traceback" not in captured.err


def test_validate_reports_valid_spec(capsys, shapes_manifest: Path) -> None:  # type: ignore[no-untyped-def]
    assert (
        main(["validate", "clip-tiny", "--set", f"data.sources.train.path={shapes_manifest}"]) == 0
    )
    assert capsys.readouterr().out == (
        "clip-tiny: valid (2 components, 1 objectives, 1 sources, 50 steps in 1 stage(s))\n"
        "the model builds (checked on the meta device)\n"
    )


def test_plugins_lists_every_builtin_with_its_plugin(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"kind", "name", "plugin"} <= set(rows[0])
    assert {"kind": "objective", "name": "itc", "plugin": "modaloom.objectives.contrastive"} in [
        {k: r[k] for k in ("kind", "name", "plugin")} for r in rows
    ]
    assert {r["plugin"] for r in rows} == set(BUILTIN_PLUGINS)
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    assert any(
        line.split()[:3] == ["encoder", "bert", "modaloom.modalities.text"]
        for line in table.splitlines()
    )


def test_presets_and_schema(capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(["presets"]) == 0
    assert "clip-tiny" in capsys.readouterr().out
    out = tmp_path / "schema.json"
    assert main(["schema", "--output", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert set(schema["required"]) == {"model", "data", "train"}


def test_bad_set_syntax_and_missing_spec(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["validate", "clip-tiny", "--set", "train.steps"]) == 2
    assert capsys.readouterr().err == (
        "error: spec is invalid (1 problem):\n"
        "  --set: 'train.steps' is not KEY=VALUE, e.g. train.steps=100\n"
    )
    assert main(["train", "no/such/file.yaml"]) == 2
    assert "no such file and no preset of that name" in capsys.readouterr().err


def test_train_command(capsys, shapes_manifest: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code = main(
        [
            "train",
            "clip-tiny",
            "--set",
            f"data.sources.train.path={shapes_manifest}",
            "--set",
            "train.steps=3",
            "--output",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("trained 3 steps; last loss ")


def test_unknown_command_is_argparse_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["fly"])
    assert info.value.code == 2


def test_keep_last_flag(capsys, shapes_manifest: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code = main(
        [
            "train",
            "clip-tiny",
            "--set",
            f"data.sources.train.path={shapes_manifest}",
            "--set",
            "train.steps=3",
            "--set",
            "train.checkpoint_every=1",
            "--keep-last",
            "1",
            "--output",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert code == 0
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"modaloom {importlib.metadata.version('modaloom')}\n"
