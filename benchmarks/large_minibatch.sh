#!/usr/bin/env bash
# Large-minibatch recipe search (docs/benchmarks.md, section 9): 4x the batch (8 instead of 2) and 4x
# fewer iterations (125 instead of 500), or 2x and 2x (x2_*), in the fast-recipe benchmark's regime
# (configs/bench_fast.yaml),
# against its basicsr and multigrid runs, which are reused from runs/bench_fast when they finished there
# with the same config. Every variant is fp32 with torch's multi-tensor Adam, as those two presets.
#
#   bash benchmarks/large_minibatch.sh [--seeds N] [--threads N] [VARIANT ...]
#
# With variant names, only those are trained (plus the reused references); without, all of them.
# The frozen-flow phase and the validation interval keep their share of the run (50 -> 13 or 25).
# The LR is scaled from the reference batch 2 by optim.lr_scaling; warmup_from=base ramps it from the
# unscaled LR (Goyal et al. 2017). On one device a larger batch saves no time (same samples, same
# FLOPs); the wall-clock it would save on N devices is projected by benchmarks/ddp_projection.py.
set -euo pipefail
seeds=1
threads=()
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --seeds) seeds=$2; shift 2 ;;
    --threads) threads=(--threads "$2"); shift 2 ;;
    *) echo "unknown option '$1'" >&2; exit 2 ;;
  esac
done

# Shared by every variant: fp32 as the two presets, the LR scaled from the reference batch 2 and
# warmed up from the unscaled LR.
common="train.amp=none,train.channels_last=false,optim.adam_impl=foreach,optim.ref_batch=2,schedule.warmup_from=base"
x4="$common,schedule.batch_size=8,schedule.total_iters=125,optim.fix_flow_iters=13,train.val_every=13"
x2="$common,schedule.batch_size=4,schedule.total_iters=250,optim.fix_flow_iters=25,train.val_every=25"
declare -A variants=(
  [mg_x4_sqrt]="schedule.kind=multigrid,$x4,optim.lr_scaling=sqrt,schedule.warmup_iters=13"
  [mg_x4_linear]="schedule.kind=multigrid,$x4,optim.lr_scaling=linear,schedule.warmup_iters=31"
  [fixed_x4_sqrt]="schedule.kind=fixed,$x4,optim.lr_scaling=sqrt,schedule.warmup_iters=13"
  [fixed_x4_linear]="schedule.kind=fixed,$x4,optim.lr_scaling=linear,schedule.warmup_iters=31"
  [mg_x2_sqrt]="schedule.kind=multigrid,$x2,optim.lr_scaling=sqrt,schedule.warmup_iters=25"
  [mg_x2_linear]="schedule.kind=multigrid,$x2,optim.lr_scaling=linear,schedule.warmup_iters=25"
  [fixed_x2_linear]="schedule.kind=fixed,$x2,optim.lr_scaling=linear,schedule.warmup_iters=25"
)
# The same with the last conv zero-initialised, as the fast preset (docs/benchmarks.md, section 7).
for name in mg_x4_sqrt mg_x4_linear mg_x2_linear fixed_x2_linear; do
  variants[${name}_zero]="${variants[$name]},model.zero_init_output=true"
done
order=(mg_x4_sqrt mg_x4_linear fixed_x4_sqrt fixed_x4_linear mg_x2_sqrt mg_x2_linear fixed_x2_linear
       mg_x4_sqrt_zero mg_x4_linear_zero mg_x2_linear_zero fixed_x2_linear_zero)
chosen=("$@")
if [[ ${#chosen[@]} -eq 0 ]]; then chosen=("${order[@]}"); fi

args=()
for name in "${chosen[@]}"; do
  if [[ -z "${variants[$name]+x}" ]]; then
    echo "unknown variant '$name'; choose from: ${order[*]}" >&2
    exit 2
  fi
  args+=(--variant "$name:${variants[$name]}")
done
mgvsr bench --config configs/bench_fast.yaml --out runs/large_minibatch --reuse runs/bench_fast \
  --seeds "$seeds" "${threads[@]}" --preset basicsr,multigrid "${args[@]}"
