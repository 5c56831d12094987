"""Start a search in a child process and kill it with SIGKILL once it reaches a given point (the kill tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[2]


def sigkill_when(code: str, args: Sequence[str], ready: Callable[[], bool], *, env: Mapping[str, str],
                 timeout: float = 120.0, poll: float = 0.01) -> subprocess.CompletedProcess:
    """Run ``python -c code *args`` in the repository root, poll ``ready()`` every ``poll`` seconds and kill the
    child with SIGKILL as soon as it is true. Fails the test when the child ends first or ``timeout`` passes.
    Returns the killed child's return code and stderr."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=dict(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the search ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the search made no progress"
            time.sleep(poll)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        _, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, None, err)
