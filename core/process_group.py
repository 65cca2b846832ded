"""How a process started by a launcher (torchrun, ``accelerate launch``) joins and leaves its group.

Importing ``torch._dynamo`` after the gloo process group exists keeps the group alive after
`torch.distributed.destroy_process_group`: its threads (two ``pt_gloo_runloop``, one
``gloo_tcp_loop``) go on running though no Python object refers to it any more (torch 2.14;
imported before the group is made, or not at all, they stop). DistributedDataParallel's
constructor imports it, so every distributed run left those threads to the interpreter's
shutdown and C++ static destructors; that is the likeliest source of the abort seen now and
then on either rank of a finished two-rank run in CI-clone runs ("terminate called without an
active exception", exit -6, which torchrun reports as a failed run although the checkpoint and
metrics were written). So a launched process imports it before joining (`prepare_to_join`),
and once its command has returned it destroys the group, runs the exit handlers a normal exit
would run, flushes its output and leaves with `os._exit`, which skips that teardown (the abort
was not reproduced here, so both guards stay).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
from typing import NoReturn


def is_launched() -> bool:
    """Whether a launcher started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def prepare_to_join() -> None:
    """Import ``torch._dynamo`` before a launched process makes its process group (see above)."""
    if is_launched():
        importlib.import_module("torch._dynamo")


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
