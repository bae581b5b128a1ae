"""How many torch threads a test may use: every core, or its share under pytest-xdist.

``pytest`` runs the suite on ``-n auto`` workers (pyproject's addopts), one per core; each
worker then trains on one thread. Two torch processes on two cores that each ask for two
threads spin against each other (OpenMP's busy wait) and run several times slower than one
thread each, so a test that trains passes ``threads=TORCH_THREADS`` instead of a number.
"""

import os

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
TORCH_THREADS = max(1, CORES // WORKERS)
