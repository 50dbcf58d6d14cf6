"""Leaving a process that used a Temporal client, without the interpreter's teardown.

The SDK's Rust core keeps threads that may still touch the interpreter while it
finalizes, and a process that has finished its work then aborts at exit:
"Fatal Python error: PyGILState_Release: thread state ... must be current when
releasing" (temporalio/sdk-python#300, open). `make run`'s seed hit it on
2026-11-26 after seeding everything, and make failed. The SDK has no call that
stops those threads, so every entry point that connects to Temporal leaves
through `run_and_leave`: it runs `main`, prints what an uncaught exception would
have printed, flushes logs and standard streams and calls `os._exit` with the
exit code `sys.exit` would have given.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def exit_code(stop: SystemExit) -> int:
    """The status `sys.exit(stop.code)` gives, printing a message code as Python does."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def leave(code: int) -> NoReturn:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or its reader went away
            pass
    os._exit(code)


def run_and_leave(main: Callable[[], int | None]) -> NoReturn:
    try:
        code = main() or 0
    except SystemExit as stop:
        code = exit_code(stop)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # what the interpreter would print, then its status 1
        if logging.getLogger().handlers:
            # Logging is set up (JSON lines with service and level): the crash goes
            # there too, one line a log pipeline can read, not a bare traceback.
            logging.getLogger("agora").critical("crashed", exc_info=True)
        else:
            traceback.print_exc()
        code = 1
    leave(code)
