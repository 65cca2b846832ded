"""Benchmark: start-up cost of a run, this tree against an older commit (imports, mostly).

Times three commands, each in a fresh interpreter: (a) ``modaloom validate clip-tiny``, (b) a
1-step ``modaloom train clip-tiny`` on 16 shape PNGs with captions (the tests' `write_shapes`,
in a temporary directory) and (c) ``modaloom plugins``, which registers every built-in and
builds no model (what registration alone imports). Each command's wall time (interpreter start
to exit) and maximum resident set size are measured ``--repeats`` times for this tree and for
``--against REV``, interleaved (REV, this tree, REV, this tree, ...), and the medians are
printed, with the heavy modules each run imported although clip-tiny (ViT + BERT) has no use
for them. The older commit is checked out as a git worktree and imported through
``PYTHONPATH`` as `benchmarks/against.py` does (same Python, same packages). The last lines are
the ratios ``REV / this tree`` of time and RSS.

Usage: ``python benchmarks/startup.py --against 05df828 [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    from against import base_pythonpath  # python benchmarks/startup.py
except ImportError:  # python -m modaloom.benchmarks.startup
    from modaloom.benchmarks.against import base_pythonpath

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import write_shapes  # noqa: E402  (the shapes data set the tests train on)

WATCHED = {
    "AST": "transformers.models.audio_spectrogram_transformer."
    "modeling_audio_spectrogram_transformer",
    "CLIP": "transformers.models.clip.modeling_clip",
    "TimeSformer": "transformers.models.timesformer.modeling_timesformer",
    "av": "av",
    "sklearn": "sklearn",
    "matplotlib": "matplotlib",
}
"""Modules a clip-tiny run does not need, by the name printed when a run imported them."""

CHILD = """
import json, resource, sys
import modaloom
from modaloom.core.cli import main
code = main(sys.argv[1:])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
watched = %s
loaded = [name for name, module in watched.items() if module in sys.modules]
print(json.dumps({"code": code, "rss_kib": rss, "package": modaloom.__file__, "loaded": loaded}))
"""
"""One command in a fresh interpreter; its last stdout line reports exit code, max RSS (KiB),
which ``modaloom`` it imported and which `WATCHED` modules it loaded."""


def run_once(args: list[str], pythonpath: Path | None, cwd: Path) -> tuple[float, float, list[str]]:
    """Wall seconds, max RSS in MiB and the `WATCHED` modules loaded of ``modaloom <args>`` in a
    fresh process whose ``modaloom`` is the one in ``pythonpath`` (default: this tree)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", CHILD % json.dumps(WATCHED), *args]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"modaloom {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.splitlines()[-1])
    if report["code"] != 0:
        sys.exit(f"modaloom {' '.join(args)} returned {report['code']}:\n{done.stderr[-3000:]}")
    if not report["package"].startswith(str(pythonpath or ROOT)):
        sys.exit(f"imported {report['package']}, not the modaloom of {pythonpath or ROOT}")
    return seconds, report["rss_kib"] / 1024, report["loaded"]


def commands(manifest: Path, scratch: Path) -> dict[str, list[str]]:
    """The measured commands by name (train writes its run under ``scratch``)."""
    return {
        "validate": ["validate", "clip-tiny"],
        "train": [
            "train",
            "clip-tiny",
            "--set",
            f"data.sources.train.path={manifest}",
            "--set",
            "train.steps=1",
            "--output",
            str(scratch),
            "--no-progress",
        ],
        "plugins": ["plugins"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the older commit (any git revision)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, interleaved")
    parser.add_argument("--worktrees", type=Path, default=Path("/tmp/modaloom-against"))
    args = parser.parse_args(argv)
    contenders = {args.against: base_pythonpath(args.against, args.worktrees), "this tree": None}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    loaded: dict[tuple[str, str], list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_shapes(root, 16)
        for repeat in range(args.repeats):
            for label, pythonpath in contenders.items():
                for name, command in commands(manifest, root / f"run-{label}-{repeat}").items():
                    seconds, rss, unused = run_once(command, pythonpath, root)
                    results.setdefault((label, name), []).append((seconds, rss))
                    loaded[(label, name)] = unused
    print(f"clip-tiny start-up: {args.against} vs this tree, {args.repeats} runs each (medians)")
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    for (label, name), runs in results.items():
        seconds = statistics.median(run[0] for run in runs)
        rss = statistics.median(run[1] for run in runs)
        medians[(label, name)] = seconds, rss
        unused = ", ".join(loaded[(label, name)]) or "none"
        print(f"{name:9s} {label:10s} {seconds:6.2f} s  {rss:6.0f} MiB  unused imported: {unused}")
    for name in ("validate", "train", "plugins"):
        base_s, base_rss = medians[(args.against, name)]
        new_s, new_rss = medians[("this tree", name)]
        ratios = f"time {base_s / new_s:.2f}x RSS {base_rss / new_rss:.2f}x"
        print(f"{name} {args.against}/this tree: {ratios}")


if __name__ == "__main__":
    main()
