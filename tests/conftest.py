"""Shared test helpers."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cores import TORCH_THREADS, WORKERS

if WORKERS > 1:  # before torch is imported: its OpenMP pool reads these once
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(TORCH_THREADS))

import torch  # noqa: E402

from lapo.checkpoint import load_tensors  # noqa: E402

torch.set_num_threads(TORCH_THREADS)

# The files that take longest, slowest first (measured: docs/results/tests.md). Under xdist each
# worker takes whole files, in this order, so the long ones start at once on different workers
# and the short ones fill in behind them.
SLOWEST_FILES = (
    "test_demo.py",
    "test_lam.py",
    "test_lam_learning.py",
    "test_reproduce.py",
    "test_stages23.py",
    "test_distributed.py",
    "test_demonstrators.py",
)


# Module fixtures that train models or run whole pipelines: a test that uses one is slow (it
# runs in the full suite, not in the fast tier `pytest -m "not slow"`)
SLOW_FIXTURES = {
    "demo",  # test_demo.py: lapo demo --fast
    "lam_run",  # test_stages23.py: stage 1, then stage 2 and decoding on top
    "stage2",
    "decoded",
    "one_process",  # test_distributed.py: torchrun runs
    "two_ranks",
    "random_bigfish",  # test_lam_learning.py: the stage-1 learning test
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOWEST_FILES.index(name) if name in SLOWEST_FILES else len(SLOWEST_FILES)

    items.sort(key=rank)  # stable: the order inside a file and among the rest is kept


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
