"""Process control shared by the vLLM server and the study's stages: stop a child's whole process group,
turn SIGTERM into an ordinary exit, and have the kernel stop a child when the harness dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to SIGTERM the child when the harness dies, even by SIGKILL.

    Linux only (prctl PR_SET_PDEATHSIG); the signal follows the *thread* that started the child. Everything
    is looked up before the fork, so the child runs no imports between fork and exec.
    """
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def set_parent_death_signal() -> None:
        prctl(1, sigterm)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the harness died before prctl took effect
            os._exit(1)

    return set_parent_death_signal


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the child's process group, and reap the child."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def stop_process_group(process: subprocess.Popen, *, first_signal: int = signal.SIGTERM, grace: float = 20.0,
                       settle: float = 5.0) -> None:
    """Stop a child that leads its own session and process group, and everything it started: `first_signal`,
    up to `grace` seconds for the child, up to `settle` more (within the grace) for the rest of its group,
    then SIGKILL to whatever is left."""
    pgid = process.pid
    try:
        if process.poll() is None:
            try:
                os.killpg(pgid, first_signal)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # Grandchildren (a vLLM engine core, a stage's server) may outlive the child by a moment.
        settle_until = min(deadline, time.monotonic() + settle)
        while group_alive(pgid) and time.monotonic() < settle_until:
            time.sleep(0.1)
    finally:  # also when the wait is interrupted (a second Ctrl-C): then the group is killed at once
        kill_group(process)


def raise_on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    """SIGTERM becomes an ordinary exit, so `finally` blocks (and child shutdowns) run."""
    raise SystemExit(128 + signum)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, a polite kill (SIGTERM) unwinds like Ctrl-C; only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
