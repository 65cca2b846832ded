"""Property-based fuzz of specs (issue 12 §5, "Show it"): mutate the presets' fields and check
that each mutation either validates and builds on the meta device, or raises one `SpecError`
whose every problem is located in a section of the spec. Never another exception, never a hang.

Mutations: a value replaced by a wrong type, a negative, zero or huge number, an unknown name;
a key deleted; an unknown key added. The run is derandomized (the same examples every time)
and each case has a wall-clock limit.
"""

from __future__ import annotations

import copy
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modaloom.core.build_check import check_build
from modaloom.core.errors import SpecError
from modaloom.core.registry import Registry
from modaloom.core.spec import load_spec, resolve_tree

PRESETS = ("clip-tiny", "cots-tiny", "omnivl-tiny", "valor-tiny", "cots", "omnivl", "valor")
SECTIONS = ("model", "data", "train", "eval")
CASE_SECONDS = 10
"""Wall-clock limit of one mutated spec (load and meta build take well under a second)."""

BAD_VALUES = st.sampled_from(
    [
        "abc",
        "visionn",
        "",
        -1,
        0,
        1,
        -0.5,
        10**12,
        2**64,
        1e300,
        None,
        True,
        [],
        {},
        ["text", "visionn"],
        {"type": "nope"},
    ]
)
"""Wrong types, negative, zero and huge numbers, unknown names."""
WRONG_BUT_VALID = st.sampled_from(["text", "vision", "audio", "decoder", 2, 3, 7, 64, 0.5])
"""Values of the right type that name or size the wrong thing (so that the build runs)."""
Path = tuple[str | int, ...]


class CaseTimeout(Exception):
    """A mutated spec took longer than `CASE_SECONDS` to load and build."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `CaseTimeout` in the main thread after ``seconds`` of wall-clock time."""

    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"a case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@cache
def preset_tree(name: str, registry: Registry) -> dict[str, Any]:
    """A preset's resolved mapping (copied before each mutation)."""
    return resolve_tree(name, registry)


def node_paths(tree: Any, prefix: Path = ()) -> list[Path]:
    """The path of every value below the root, in document order."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(tree, dict):
        children = list(tree.items())
    elif isinstance(tree, list):
        children = list(enumerate(tree))
    paths: list[Path] = []
    for key, value in children:
        paths.append((*prefix, key))
        paths += node_paths(value, (*prefix, key))
    return paths


def mutate(tree: dict[str, Any], path: Path, operation: str, value: Any) -> None:
    """Apply one mutation in place: ``set`` a value, ``delete`` the key, or ``add`` a key."""
    parent: Any = tree
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if operation == "delete":
        del parent[last]
    elif operation == "add" and isinstance(parent[last], dict):
        parent[last]["colour"] = value
    else:
        parent[last] = value


@st.composite
def mutated_specs(draw: st.DrawFn, registry: Registry) -> tuple[str, dict[str, Any]]:
    """A preset name and its tree after one to three mutations."""
    name = draw(st.sampled_from(PRESETS))
    tree = copy.deepcopy(preset_tree(name, registry))
    for _ in range(draw(st.integers(1, 3))):
        paths = node_paths(tree)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        operation = draw(st.sampled_from(["set", "set", "set", "delete", "add"]))
        value = draw(st.one_of(BAD_VALUES, WRONG_BUT_VALID))
        mutate(tree, path, operation, copy.deepcopy(value))  # a later mutation may edit it
    return name, tree


def test_time_limit_interrupts_a_hang() -> None:
    with pytest.raises(CaseTimeout), time_limit(0.2):
        while True:
            pass


@pytest.mark.timeout(300)
def test_every_mutation_builds_or_gives_located_problems(registry: Registry) -> None:
    @settings(
        max_examples=300,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(mutated_specs(registry))
    def check(case: tuple[str, dict[str, Any]]) -> None:
        _, tree = case
        with time_limit(CASE_SECONDS):
            try:
                spec = load_spec(tree, (), registry)
                check_build(spec, registry)
            except SpecError as exc:
                assert exc.problems
                for path, message in exc.problems:
                    assert path.split(".")[0] in SECTIONS, (path, message)
                    assert message.strip(), path

    check()
