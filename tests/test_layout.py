"""The dependency rule of DESIGN.md, read from the imports (ast): the house is a star.

modalities/, objectives/ and plugins/<kind>/ (sources, evaluators, presets, recipes) import
`modaloom.core` (and third-party libraries) and never each other; core imports none of them
(built-ins are loaded by name through the registry). Imports inside functions and under
``TYPE_CHECKING`` count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FOLDERS: dict[str, str] = {
    "core": "modaloom.core",
    "modalities": "modaloom.modalities",
    "objectives": "modaloom.objectives",
    "plugins/sources": "modaloom.plugins.sources",
    "plugins/evaluators": "modaloom.plugins.evaluators",
    "plugins/presets": "modaloom.plugins.presets",
    "plugins/recipes": "modaloom.plugins.recipes",
}
"""Each checked folder and the package it is."""

ALLOWED: dict[str, tuple[str, ...]] = {
    folder: ("modaloom.core", package) for folder, package in FOLDERS.items()
}
"""What each folder may import of modaloom: core and itself."""


def modaloom_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute ``modaloom`` import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "modaloom"]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def forbidden_imports(root: Path) -> list[str]:
    """``file:line imports module`` for every import that breaks the rule under ``root``."""
    problems = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((root / folder).rglob("*.py")):
            for line, name in modaloom_imports(path):
                if not any(_within(name, package) for package in allowed):
                    where = path.relative_to(root)
                    problems.append(f"{where}:{line} imports {name}")
    return problems


def test_the_package_follows_the_dependency_rule() -> None:
    assert forbidden_imports(ROOT) == []


def test_the_check_catches_an_import_across_folders(tmp_path: Path) -> None:
    (tmp_path / "objectives").mkdir()
    (tmp_path / "core").mkdir()
    (tmp_path / "objectives" / "lm.py").write_text(
        "from modaloom.core.features import Group\n"
        "from modaloom.objectives.conditioning import text_tokens\n"
        "def f():\n    from modaloom.modalities.text import TextProcessor\n"
    )
    (tmp_path / "core" / "cli.py").write_text("import modaloom.plugins.sources.jsonl\n")
    assert forbidden_imports(tmp_path) == [
        "core/cli.py:1 imports modaloom.plugins.sources.jsonl",
        "objectives/lm.py:4 imports modaloom.modalities.text.TextProcessor",
    ]
