# Sourced by the prepared GPU scripts (gpu_check.sh, stage1_paper.sh): the project runs from
# src/ on a bare machine with the repository copied onto it. A CUDA torch already there is used
# as it is (PyPI's torch may not be a CUDA build); only the dependencies that are missing are
# installed; without any torch, the project with its dependencies from PyPI. Sets PY.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
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

