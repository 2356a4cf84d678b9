#!/usr/bin/env bash
# GPU-ready check (docs/benchmarks.md, "GPU check"): step times of the paper-scale model at every shape
# of the multigrid schedule in fp32 / bf16 / bf16 + channels_last, with and without batch scaling, the
# whole-run projection, and a short basicsr-vs-fast side-by-side run; under 8 minutes on one GPU.
#
#   benchmarks/gpu_check.sh                 # on the GPU; JSON to $OUT/ if set, else docs/results/
#   benchmarks/gpu_check.sh --tiny          # toy sizes, any device (a smoke test; about a minute on a CPU)
#   benchmarks/gpu_check.sh --json r.json --budget 400 --bench-seconds 60   # see --help
#
# Needs no network: uses the installed mgvsr if it imports, else installs this checkout without
# fetching anything (pip --no-index), else runs it from src/. Set PYTHON to pick the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python}

if ! "$PY" -c "import mgvsr" 2>/dev/null; then
  echo "gpu_check: mgvsr is not importable; installing this checkout (pip install -e ., no network)"
  if ! "$PY" -m pip install --quiet --no-index --no-build-isolation -e . 2>/dev/null \
     && ! "$PY" -m pip install --quiet --no-index --no-build-isolation --no-deps -e . 2>/dev/null; then
    echo "gpu_check: pip install failed; running from src/ (PYTHONPATH)"
  fi
  if ! "$PY" -c "import mgvsr" 2>/dev/null; then
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
# Name what is missing before anything runs (the side-by-side stage also needs PIL, matplotlib, safetensors).
"$PY" - <<'PYEOF'
import importlib.util, sys
missing = [m for m in ("torch", "numpy", "yaml", "PIL", "safetensors", "matplotlib") if importlib.util.find_spec(m) is None]
if missing:
    print(f"gpu_check: missing Python packages: {', '.join(missing)} (stages that need them will report an error)",
          file=sys.stderr)
PYEOF
exec "$PY" benchmarks/gpu_check.py "$@"
