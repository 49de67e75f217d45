"""Run repo2docker so that the whole build dies with the runner.

``python -m booklab_spawner.runner.r2d_child ARGS`` starts ``repo2docker ARGS``
in a process group of its own and kills that group (repo2docker and the
``docker buildx build`` it runs, which makes BuildKit cancel the build) when
it gets SIGTERM, or when the runner that started it dies: Linux delivers
SIGTERM then through ``PR_SET_PDEATHSIG``. A runner killed with SIGKILL
therefore leaves no orphan build behind. When repo2docker exits, whatever is
left of its group is killed too, so that nothing keeps the build's output pipe
(which the runner reads to its end) open.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: SIGTERM from the runner still works
        return
    if parent and os.getppid() != parent:  # the runner died before prctl
        sys.exit(143)


def main() -> int:
    _die_with_parent(int(os.environ.pop("BOOKLAB_RUNNER_PID", "0") or 0))
    proc = subprocess.Popen([sys.executable, "-m", "repo2docker", *sys.argv[1:]],
                            start_new_session=True)

    def stop(signum: int, _frame: object) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = proc.wait()
    # nothing of a finished build lives on: a leftover of its group would hold the
    # output pipe open, and the runner reads the build's log until that pipe ends
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return code


if __name__ == "__main__":
    sys.exit(main())
