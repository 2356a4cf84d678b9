#!/usr/bin/env bash
# Ablations of the multigrid schedule (docs/benchmarks.md): one invocation, runs one after another on
# the same data and seed; the first variant is the reference. Half the main benchmark's iterations by
# default (ITERS=300). Extra arguments (e.g. --seeds 2, more --variant) are passed to mgvsr bench.
set -euo pipefail
ITERS=${ITERS:-300}
mgvsr bench --out runs/ablation "schedule.total_iters=$ITERS" "optim.fix_flow_iters=$((ITERS / 12))" \
  --variant "baseline:schedule.kind=fixed" \
  --variant "multigrid:schedule.kind=multigrid" \
  --variant "spatial_only:schedule.temporal_fractions=[1.0]" \
  --variant "temporal_only:schedule.spatial_stages=[32]" \
  --variant "cosine_restart:schedule.lr_policy=cosine_restart" \
  "$@"
# Also measured when time allows (each costs about as much as the baseline on this CPU):
#   --variant "constant_lr:schedule.lr_policy=constant,schedule.warmup_iters=$((ITERS / 20))"
#   --variant "wu_batch:schedule.scale_batch=true,schedule.max_batch=16"
#   --variant "large_minibatch:schedule.kind=fixed,schedule.batch_size=16,schedule.total_iters=$((ITERS / 4)),optim.lr_scaling=linear,optim.ref_batch=4,schedule.warmup_iters=$((ITERS / 40)),optim.fix_flow_iters=$((ITERS / 48)),train.val_every=12"
