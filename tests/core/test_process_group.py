"""`modaloom.core.process_group`: a launched rank's group stops with it; its exit runs handlers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modaloom.core.process_group import leave_process_group

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
EXITING_RANK = """
import atexit, logging, sys
from pathlib import Path
from modaloom.core.process_group import exit_launched_process

marker = Path(sys.argv[1])
atexit.register(marker.write_text, "exit handlers ran")
logging.basicConfig(stream=sys.stderr, format="%(message)s")
sys.stdout.write("no newline, still buffered")
logging.getLogger("rank").warning("logged before leaving")
exit_launched_process(3)
print("never printed")
"""


def test_exit_runs_handlers_flushes_output_and_keeps_the_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EXITING_RANK), str(marker)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 3
    assert done.stdout == "no newline, still buffered"
    assert done.stderr == "logged before leaving\n"
    assert marker.read_text() == "exit handlers ran"


def test_a_process_outside_a_launcher_has_no_group_to_leave() -> None:
    assert leave_process_group() is False


RANK_WRAPPING_A_MODEL = """
import os, sys
import torch
import torch.distributed as dist
from modaloom.core.process_group import leave_process_group, prepare_to_join

if sys.argv[1] == "prepared":
    prepare_to_join()
dist.init_process_group("gloo")
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 3))  # imports torch._dynamo
del model
leave_process_group()
tasks = os.listdir("/proc/self/task")
threads = sorted(open(f"/proc/self/task/{task}/comm").read().strip() for task in tasks)
gloo = " ".join(t for t in threads if "gloo" in t) or "none"
os.write(1, f"rank {os.environ['RANK']}: {gloo}\\n".encode())  # one write: ranks share stdout
"""


@pytest.mark.parametrize(
    ("mode", "left"),
    [("prepared", "none"), ("unprepared", "gloo_tcp_loop pt_gloo_runloop pt_gloo_runloop")],
)
def test_a_prepared_rank_stops_the_groups_threads_when_it_leaves(
    mode: str, left: str, tmp_path: Path
) -> None:
    """Without `prepare_to_join`, DDP's import of ``torch._dynamo`` keeps gloo's threads."""
    script = tmp_path / "rank.py"
    script.write_text(RANK_WRAPPING_A_MODEL)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env.update(OMP_NUM_THREADS="1")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(
        [*launcher, "--nproc_per_node", "2", str(script), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [f"rank 0: {left}", f"rank 1: {left}"]
