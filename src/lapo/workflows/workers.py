"""The worker processes ``lapo demo`` runs its stages in (two at a time, :func:`lanes`) and ``lapo
reproduce`` its steps.

They start from a fork server that has imported lapo (and torch) once, so a worker starts in
a fraction of a second where a spawned one imports them again (about 7 s for two on 2
cores). A forked child of a process whose torch has started its threads can hang; the fork
server never computes, so forking it is safe. :func:`start` launches the server before the
calling process imports torch, so both import at the same time on 2 cores. This module
imports neither torch nor the rest of lapo. Where fork servers do not exist (Windows), the
workers are spawned.

A worker ends itself within a second of the process that started it (:func:`exit_with`):
killed with ``kill`` or SIGKILL, that process cannot tell its workers, which would otherwise
go on computing their stage for minutes (Ctrl-C reaches them all anyway). What they leave is
safe to resume from: checkpoints are written to a temporary file and renamed.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from multiprocessing.context import BaseContext

PRELOAD = ["lapo.workflows.demo"]
"""What the fork server imports before forking a worker: every stage's code."""


def lanes(threads: int) -> tuple[int, int]:
    """``(stages run side by side, torch threads of each)`` for ``threads`` CPU threads in all
    (0: this process's cores): two on 2 or more, each with half the threads."""
    total = threads if threads > 0 else len(os.sched_getaffinity(0))
    n = 2 if total >= 2 else 1
    return n, max(1, total // n)


def context() -> BaseContext:
    """The start method of the workers: the fork server (importing :data:`PRELOAD`) where
    the platform has one, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start(threads: int) -> None:
    """Launch the fork server now if the demo will run stages side by side on ``threads``
    threads, so that it imports lapo while this process does."""
    ctx = context()
    if lanes(threads)[0] > 1 and ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (an exited process no one has reaped
    yet, a zombie, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    try:  # Linux: the state after the command's name in /proc/PID/stat
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def exit_with(parent: int, every: float = 1.0) -> None:
    """In a worker: end this process (status 1) once process ``parent`` is gone, checked every
    ``every`` seconds by a daemon thread. The pool's ``initializer`` for ``lapo demo``'s
    workers; called first thing by ``lapo reproduce``'s."""

    def watch() -> None:
        while alive(parent):
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name=f"exit-with-{parent}", daemon=True).start()
