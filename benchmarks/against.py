"""Benchmark driver: one benchmark against an older commit of modaloom, runs interleaved.

Runs ``python <benchmark> <args>`` alternately with an older commit's package and with this
checkout's (base, new, base, new, ...; ``--runs`` each), then prints each output line of
the new runs with the median of every number in it, followed by ``[new/base: ...]``: the
ratio of the medians of each number. The same benchmark script runs both times (this
checkout's), so its lines line up; only the package it imports differs. The older commit is
checked out once as a git worktree under ``--worktrees`` and imported through a directory
holding a ``modaloom`` link to it, first on ``PYTHONPATH``.

Usage: ``python benchmarks/against.py eec2009 benchmarks/loader.py --sources map``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def base_pythonpath(commit: str, worktrees: Path) -> Path:
    """A directory whose ``modaloom`` is ``commit`` (a worktree made on first use)."""
    tree = worktrees / f"wt-{commit}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit],
            check=True,
            capture_output=True,
        )
    holder = worktrees / f"pkg-{commit}"
    holder.mkdir(parents=True, exist_ok=True)
    link = holder / "modaloom"
    if not link.exists():
        link.symlink_to(tree)
    return holder


def run_once(command: list[str], pythonpath: Path | None) -> list[str]:
    """The stdout lines of one run (``pythonpath`` first on the path when given)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.splitlines()


def medians(runs: list[list[str]]) -> list[tuple[str, list[float]]]:
    """Each line of the first run with the median of each of its numbers over ``runs``."""
    out = []
    for index, line in enumerate(runs[0]):
        columns = [
            [float(value) for value in NUMBER.findall(run[index])]
            for run in runs
            if index < len(run)
        ]
        width = min(len(values) for values in columns)
        out.append((line, [statistics.median(v[i] for v in columns) for i in range(width)]))
    return out


def substitute(line: str, values: list[float]) -> str:
    """``line`` with its numbers replaced, in order, by ``values``."""
    pending = iter(values)
    return NUMBER.sub(lambda match: f"{next(pending, float(match.group())):g}", line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", help="the older commit (any git revision)")
    parser.add_argument("benchmark", help="path of the benchmark script")
    parser.add_argument("--runs", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--worktrees", type=Path, default=Path("/tmp/modaloom-against"))
    args, rest = parser.parse_known_args(argv)
    base = base_pythonpath(args.commit, args.worktrees)
    command = [sys.executable, args.benchmark, *rest]
    old: list[list[str]] = []
    new: list[list[str]] = []
    for _ in range(args.runs):
        old.append(run_once(command, base))
        new.append(run_once(command, None))
    print(f"{' '.join(command[1:])}: {args.commit} vs this checkout, {args.runs} runs each")
    for (line, values), (_, before) in zip(medians(new), medians(old), strict=False):
        if not values:
            print(line)
            continue
        shown = substitute(line, values)
        ratios = " ".join(f"{n / b:.2f}" if b else "-" for n, b in zip(values, before))
        print(f"{shown}  [new/base: {ratios}]")


if __name__ == "__main__":
    main()
