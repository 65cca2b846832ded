"""How a process started by a launcher (torchrun, ``accelerate launch``) ends its command.

Once DistributedDataParallel has wrapped a model, `torch.distributed.destroy_process_group` no
longer stops the gloo group's threads: two ``pt_gloo_runloop`` and one ``gloo_tcp_loop`` are
still running afterwards, though no Python object refers to the group any more (torch 2.14; a
bare group's threads do stop). They are left to the interpreter's shutdown and C++ static
destructors, and that is the likeliest source of the abort seen now and then on either rank of a
finished two-rank training run in CI-clone runs ("terminate called without an active exception",
exit -6, which torchrun reports as a failed run although the checkpoint and metrics were
written). So a launched rank whose command has returned destroys the group, runs the exit
handlers a normal exit would run, flushes its output and leaves with `os._exit`, which skips
that teardown.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import NoReturn


def leave_process_group() -> bool:
    """Destroy the process group this process joined, if any; torch is only asked when imported.

    Returns:
        Whether there was one (the process was started by a launcher and joined its group).
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return False
    distributed.destroy_process_group()
    return True


def exit_launched_process(code: int) -> NoReturn:
    """End a launched rank with ``code`` once its command is done, skipping the teardown above.

    What a normal exit does first is done here too: the ``atexit`` handlers (trackers,
    temporary directories, ``weakref.finalize``) and flushing logs and standard streams.
    """
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
