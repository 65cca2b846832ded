"""A launched rank's exit (`modaloom.core.process_exit`): handlers run, output flushed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from modaloom.core.process_exit import leave_process_group

EXITING_RANK = """
import atexit, logging, sys
from pathlib import Path
from modaloom.core.process_exit import exit_launched_process

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
