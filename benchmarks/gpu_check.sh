#!/usr/bin/env bash
# GPU-ready check (docs/benchmarks.md, "GPU check"): step times of the paper-scale model (BasicVSR 64/30,
# REDS multigrid schedule) at every shape in fp32 / bf16 / bf16 + channels_last, with and without batch
# scaling, the whole-run projection, and a ~3-minute basicsr-vs-fast side-by-side run; a hard 420 s budget
# (under 8 minutes with start-up) on one GPU.
#
#   benchmarks/gpu_check.sh                 # CUDA: paper scale; no CUDA: the CPU scale (--tiny, see below)
#   benchmarks/gpu_check.sh --out r.json --budget-s 400 --bench-seconds 60   # see --help
#
# Device: CUDA when torch sees a GPU. Without one (and without --device / --tiny) the check runs at the
# CPU scale, --tiny: BasicVSR 8 features / 1 block, LR patches 16 -> 24, T 2 -> 4, batch 2, a 2-iteration
# side-by-side run (about a minute on a 2-core CPU); the paper-scale model would need hours there.
# JSON: --out, else $OUT/ when set, else docs/results/gpu_check_<device>_<date>.json. Exit status non-zero
# when a stage failed.
#
# Needs no network: uses the installed mgvsr if it imports, else installs this checkout without
# fetching anything (pip --no-index), else runs it from src/. Set PYTHON to pick the interpreter (default:
# python, else python3, as on images that ship only python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-$(command -v python || command -v python3 || echo python)}

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

args=("$@")
case " $* " in
  *" --tiny "*|*" --device "*|*" --device="*|*" -h "*|*" --help "*) ;;
  *)
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
      echo "gpu_check: no CUDA device; running the CPU scale (--tiny: 8 features, 1 block, patches 16 -> 24)"
      args=(--tiny --device cpu "${args[@]}")
    fi ;;
esac
echo "gpu_check: $PY benchmarks/gpu_check.py ${args[*]}"
exec "$PY" benchmarks/gpu_check.py "${args[@]}"
