"""Nothing from a run or model directory runs code: a tokenizer whose config names its own class
(``auto_map``) is refused, without a prompt and without importing that class."""

from __future__ import annotations

import ast
import builtins
import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import modaloom
from modaloom.core.cli import main
from modaloom.core.errors import RemoteCodeError
from modaloom.modalities.text import load_tokenizer

AUTO_MAP = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def plant(tokenizer_dir: Path, marker: Path) -> None:
    """Name a custom tokenizer class whose module writes ``marker`` when imported."""
    config_path = tokenizer_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(auto_map=AUTO_MAP, tokenizer_class="EvilTokenizer")
    config_path.write_text(json.dumps(config))
    (tokenizer_dir / "evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )


def refusal(directory: Path) -> str:
    return (
        f"refusing to load {directory}: tokenizer_config.json names custom code (auto_map: "
        f"{json.dumps(AUTO_MAP)}); modaloom never runs code from a model or run directory "
        "(trust_remote_code=False)"
    )


@pytest.fixture(autouse=True)
def no_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    def prompt(*args: object) -> str:
        raise AssertionError("asked the user whether to run custom code")

    monkeypatch.setattr(builtins, "input", prompt)


@pytest.fixture
def evil_tokenizer(trained_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    directory = Path(shutil.copytree(trained_run / "artifacts" / "tokenizer", tmp_path / "tok"))
    marker = tmp_path / "code-ran"
    plant(directory, marker)
    return directory, marker


def test_load_tokenizer_refuses_auto_map(evil_tokenizer: tuple[Path, Path]) -> None:
    directory, marker = evil_tokenizer
    with pytest.raises(RemoteCodeError) as info:
        load_tokenizer(directory)
    assert str(info.value) == refusal(directory)
    assert not marker.exists()


def test_transformers_is_told_not_to_trust_remote_code(evil_tokenizer: tuple[Path, Path]) -> None:
    """The second line of defence: what `load_tokenizer` passes refuses by itself."""
    directory, marker = evil_tokenizer
    with pytest.raises(ValueError, match="contains custom code which must be executed"):
        AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    assert not marker.exists()


def test_cli_refuses_a_spec_tokenizer_with_custom_code(  # type: ignore[no-untyped-def]
    evil_tokenizer, train_args, tmp_path, capsys
) -> None:
    directory, marker = evil_tokenizer
    run = tmp_path / "new"
    assert main(train_args(run, "--set", f"data.text.tokenizer={directory}")) == 2
    assert capsys.readouterr().err == f"error: {refusal(directory)}\n"
    assert not marker.exists()
    assert not (run / "spec.yaml").exists()


def test_a_run_with_a_planted_tokenizer_is_refused_and_left_unchanged(  # type: ignore[no-untyped-def]
    copy_run, train_args, tmp_path, capsys
) -> None:
    run = copy_run()
    marker = tmp_path / "code-ran"
    plant(run / "artifacts" / "tokenizer", marker)
    before = snapshot(run)
    with pytest.raises(RemoteCodeError) as info:
        modaloom.load(run)
    assert str(info.value) == refusal(run / "artifacts" / "tokenizer")
    assert main(train_args(run, "--resume", steps=3)) == 2
    assert capsys.readouterr().err == f"error: {refusal(run / 'artifacts' / 'tokenizer')}\n"
    assert not marker.exists()
    assert snapshot(run) == before


def test_every_from_pretrained_call_passes_trust_remote_code_false() -> None:
    root = Path(modaloom.__file__).parent
    calls = []
    for path in sorted(root.glob("[!.t]*/**/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                trusted = {k.arg: k.value for k in node.keywords}.get("trust_remote_code")
                ok = isinstance(trusted, ast.Constant) and trusted.value is False
                calls.append((f"{path.relative_to(root)}:{node.lineno}", ok))
    assert len(calls) >= 2, calls  # AutoTokenizer, and modalities/hf_checkpoint.py for every model
    assert [where for where, ok in calls if not ok] == []
