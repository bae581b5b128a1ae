#!/usr/bin/env bash
# The prepared GPU check: from a bare machine with this repository copied onto it, about
# 10 minutes of one H100. Collects coinrun data with the shipped demonstrator, then times the
# paper preset's stage 1 and stage 2 at full size with and without each fast-path option,
# single-process and through torchrun (2 processes on the one GPU: the data-parallel code path),
# and prints one table (also written to $OUT/gpu_check.md and .json when OUT is set).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --toy      # toy sizes on a CPU (or LAPO_GPU_CHECK_TOY=1)
#
# Installs nothing over a torch that is already there: a CUDA torch on the machine is used as
# it is (PyPI's torch may not be a CUDA build). The project runs from src/ (PYTHONPATH), so only
# the dependencies that are missing are installed; without any torch, the project with its
# dependencies from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # works even where pip cannot install

if $PY -c "import torch" 2>/dev/null; then
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA available:', torch.cuda.is_available())"
  missing=$($PY - <<'PY'
import importlib.metadata as md, re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    name = re.split(r"[<>=!~ ;\[]", dep, maxsplit=1)[0]
    if name == "torch":
        continue
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(dep)
PY
)
  if [ -n "$missing" ]; then
    echo "gpu_check: installing missing dependencies: $(echo $missing | tr '\n' ' ')"
    # shellcheck disable=SC2086
    $PY -m pip install -q $missing || echo "gpu_check: could not install them; trying anyway"
  fi
else
  echo "gpu_check: no torch here; installing the project with its dependencies from PyPI"
  $PY -m pip install -q -e .
  $PY -c "import torch; print('torch', torch.__version__, 'CUDA available:', torch.cuda.is_available())"
fi

exec $PY benchmarks/gpu_check.py "$@"
