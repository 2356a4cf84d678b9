"""Cost of the per-step bookkeeping around forward/backward: Adam implementations, EMA, gradient norm.

    python benchmarks/step_overhead.py [--feat 64 --blocks 30] [--repeat 20] [--device cpu]

A small smoke run: ``--feat 4 --blocks 1 --repeat 2``.

On a model's real parameter set with random gradients, times (median of ``--repeat``): one Adam step
as the per-tensor loop (``foreach=False``, ``optim.adam_impl: plain``), multi-tensor (``foreach=True``,
``foreach``) and fused (``fused=True``, ``fused`` and, where available, the default ``auto``); the EMA update as the former per-tensor loop and as
``mgvsr.optim.EMA.update`` (foreach; with the device-side skip); the gradient norm. Also checks that
fused and per-tensor Adam agree after 10 steps (largest relative difference).
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time

import torch

from mgvsr.bench import machine_info
from mgvsr.config import ModelConfig, OptimConfig
from mgvsr.models import build_model
from mgvsr.optim import EMA, make_optimizer, optimizer_step


def timed(fn, repeat: int, device: torch.device) -> float:
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--feat", type=int, default=64)
    p.add_argument("--blocks", type=int, default=30)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    print(f"command: {shlex.join(['python', 'benchmarks/step_overhead.py', *(argv if argv is not None else sys.argv[1:])])}")
    print(f"machine: {machine_info()}  threads: {torch.get_num_threads()}")
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="basicvsr", num_feat=args.feat, num_block=args.blocks)).to(device)
    params = list(model.parameters())
    print(f"BasicVSR {args.feat}/{args.blocks}: {len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.2f} M parameters")
    for param in params:
        param.grad = torch.randn_like(param) * 1e-3
    cfg = OptimConfig(lr=1e-4)
    groups = [(list(g["params"]), g["lr"]) for g in make_optimizer(model, cfg).param_groups]
    rows = {}
    for name, kwargs in (("per-tensor", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        # fresh group dicts: an optimiser writes its defaults into the dicts it is given
        opt = torch.optim.Adam([{"params": ps, "lr": lr} for ps, lr in groups], lr=cfg.lr, **kwargs)
        rows[f"Adam {name}"] = timed(opt.step, args.repeat, device)
    fused = make_optimizer(model, cfg)
    flag = torch.zeros((), device=device)
    rows["Adam fused + found_inf (mgvsr)"] = timed(lambda: optimizer_step(fused, flag), args.repeat, device)

    ema = EMA(model, 0.999)

    @torch.no_grad()
    def old_ema():
        ema_state = ema.model.state_dict()
        for key, value in model.state_dict().items():
            ema_state[key].mul_(0.999).add_(value, alpha=1 - 0.999)

    rows["EMA per-tensor loop (before)"] = timed(old_ema, args.repeat, device)
    rows["EMA foreach (mgvsr)"] = timed(lambda: ema.update(model), args.repeat, device)
    rows["EMA foreach + device skip (mgvsr)"] = timed(lambda: ema.update(model, skip=flag.bool()), args.repeat, device)
    rows["grad norm (get_total_norm)"] = timed(lambda: torch.nn.utils.get_total_norm([p.grad for p in params]),
                                               args.repeat, device)
    rows["grad norm + clip (clip_grad_norm_)"] = timed(lambda: torch.nn.utils.clip_grad_norm_(params, 1e9),
                                                       args.repeat, device)
    for name, seconds in rows.items():
        print(f"{name:<36} {seconds * 1e3:8.2f} ms")

    # Fused vs per-tensor Adam on the same gradients for 10 steps.
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    opt_a = torch.optim.Adam(a.parameters(), lr=cfg.lr, fused=True)
    opt_b = torch.optim.Adam(b.parameters(), lr=cfg.lr, foreach=False)
    gen = torch.Generator(device=device).manual_seed(1)
    for _ in range(10):
        for pa, pb in zip(a.parameters(), b.parameters()):
            g = torch.randn(pa.shape, generator=gen, device=device) * 1e-3
            pa.grad, pb.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    with torch.no_grad():
        worst = max(float(((pa - pb).abs() / pb.abs().clamp_min(1e-12)).max()) for pa, pb in zip(a.parameters(), b.parameters()))
    exact = all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    print(f"fused vs per-tensor Adam after 10 steps: bit-identical {exact}, largest relative difference {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
