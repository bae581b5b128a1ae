"""Shared test helpers."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lapo.checkpoint import load_tensors


def _kill_after_checkpoint(cmd: list[str], checkpoint: Path, key: str, at_least: int) -> None:
    """Run ``cmd`` and SIGKILL it once ``checkpoint``'s meta ``key`` reaches ``at_least``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if checkpoint.exists():
                _, meta = load_tensors(checkpoint)
                if meta[key] >= at_least:
                    return
            time.sleep(0.05)
        pytest.fail("no checkpoint within 120 s")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def kill_after_checkpoint():
    """:func:`_kill_after_checkpoint`, for tests of resuming after a SIGKILL."""
    return _kill_after_checkpoint
