#!/usr/bin/env bash
# Ablations of the multigrid schedule (docs/benchmarks.md, section 2): one invocation, runs one after
# another on the same data, seed and iteration count as the main benchmark (configs/bench.yaml); the
# first variant is the reference. Finished runs of the same config in runs/bench (baseline, multigrid)
# are reused, not trained again. Extra arguments (e.g. --seeds 2) are passed to mgvsr bench.
# About 75 minutes on a 2-core CPU for the six variants not already in runs/bench.
set -euo pipefail
mgvsr bench --out runs/ablation --reuse runs/bench \
  --variant "baseline:schedule.kind=fixed" \
  --variant "multigrid:schedule.kind=multigrid" \
  --variant "cosine_restart:schedule.lr_policy=cosine_restart" \
  --variant "spatial_only:schedule.temporal_fractions=[1.0]" \
  --variant "temporal_only:schedule.spatial_stages=[64]" \
  --variant "constant_lr:schedule.lr_policy=constant,schedule.warmup_iters=20" \
  --variant "large_minibatch:schedule.kind=fixed,schedule.batch_size=8,schedule.total_iters=100,optim.lr_scaling=linear,optim.ref_batch=2,schedule.warmup_iters=10,optim.fix_flow_iters=8,train.val_every=6" \
  --variant "wu_batch:schedule.scale_batch=true,schedule.max_batch=8" \
  "$@"
