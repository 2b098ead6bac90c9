"""Children that never outlive the process that started them, whatever kills it (SIGKILL included):
the kernel sends each child SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG), and the servers
drain and exit on SIGTERM."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int):
    """A Popen preexec_fn: runs in the child between fork and exec (the setting survives exec)."""

    if sys.platform != "linux":
        return None
    # resolved here, before fork: the child must not dlopen while another thread may hold its lock
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died between fork and prctl: nobody would signal us
            os._exit(1)

    return preexec
