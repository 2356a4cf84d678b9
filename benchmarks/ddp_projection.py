"""Wall-clock of a large-minibatch run on N data-parallel devices, from measured step times and an
all-reduce cost model.

    python benchmarks/ddp_projection.py --steps STEP_TIMES.json [--mode fp32|bf16|bf16_cl]
        [--config configs/basicvsr_reds_multigrid.yaml] [--batch-factor 4] [--devices 1 2 4 8]
        [--overlap 0] [--repeat 10] [--no-measure --gloo-latency-us A --gloo-busbw-gbs B]
        [--nccl-latency-us 5 --nccl-busbw-gbs 400] [--json OUT.json] [overrides ...]

What it does:

1. **All-reduce, measured (gloo).** Two processes on this machine (``torch.multiprocessing``, TCP on
   127.0.0.1) all-reduce one fp32 tensor with as many elements as the model has parameters (the
   gradient DDP reduces every step) and a quarter of that; each size is timed ``--repeat`` times after
   a warm-up (a barrier before each; per repeat the slower rank counts), the median is kept. The two
   sizes fit the ring model below at N = 2: ``t = 2 alpha + S / B``.
2. **All-reduce, modelled.** Ring all-reduce of ``S`` bytes over ``N`` devices:
   ``t(N) = 2 (N - 1) alpha + 2 (N - 1) / N * S / B`` (0 for N = 1), with ``alpha`` the per-step latency
   and ``B`` the *bus bandwidth* as nccl-tests reports it. gloo uses the fitted alpha and B; NCCL uses
   ``--nccl-latency-us`` and ``--nccl-busbw-gbs``, which are assumptions (defaults: 5 us and 400 GB/s,
   the order of an 8-GPU NVLink/NVSwitch node of the H100 class), not measurements.
3. **Step time on N devices.** ``t_step(N) = t_compute(T, patch, per-device batch) +
   (1 - overlap) * t_allreduce(N)``; ``--overlap`` is the share of the all-reduce hidden behind the
   backward pass (DDP overlaps bucket reductions with it; 0 = none hidden, the conservative default).
   ``t_compute`` comes from ``--steps``: the JSON of ``benchmarks/gpu_check.py``,
   ``benchmarks/model_step_time.py`` or ``benchmarks/projection.py``. A shape measured at another batch
   is scaled by the batch curve measured at the full shape when the file has several batches there
   (gpu_check's batch sweep; piecewise linear), else linearly in the batch; the output lists which
   shapes were scaled.
4. **The runs.** Reference: the config's recipe on one device (per-device batch ``B`` =
   ``schedule.batch_size``, ``total_iters`` iterations), fixed shape (BasicSR's) and multigrid. Large
   minibatch: global batch ``k B`` (``--batch-factor k``) for ``total_iters / k`` iterations, split
   over N devices (per-device batch ``k B / N``), fixed and multigrid; wall-clock = sum over the
   schedule's phases of iterations x ``t_step(N)`` (``benchmarks/projection.py``'s ``project_run``).
   Whether the large minibatch keeps quality is a separate question (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import datetime as dt
import json
import math
import os
import re
import shlex
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from projection import project_run  # noqa: E402  (benchmarks/ is not a package)

from mgvsr.bench import machine_info  # noqa: E402
from mgvsr.config import Config, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NCCL_LATENCY_US = 5.0  # assumption: per ring step, NVLink within one node
NCCL_BUSBW_GBS = 400.0  # assumption: nccl-tests all_reduce bus bandwidth, 8-GPU H100-class NVSwitch node
Shape = tuple[int, int, int]  # (T, LR patch, per-device batch)


# --------------------------------------------------------------------------------------------------
# All-reduce: the ring model and a gloo measurement
# --------------------------------------------------------------------------------------------------


def ring_allreduce_s(nbytes: float, world: int, latency_s: float, busbw_bytes_s: float) -> float:
    """Ring all-reduce time: ``2 (N-1) alpha + 2 (N-1)/N * S / B`` (reduce-scatter then all-gather,
    N - 1 steps each); 0 on one device."""
    if world <= 1:
        return 0.0
    return 2 * (world - 1) * latency_s + 2 * (world - 1) / world * nbytes / busbw_bytes_s


def fit_ring(sizes_bytes: list[float], times_s: list[float]) -> tuple[float, float]:
    """(alpha, B) of the ring model at N = 2 (``t = 2 alpha + S / B``) from timings at two or more
    sizes (least squares). Falls back to alpha = 0 and B from the largest size when the fit is not
    physical (noise can make the slope or the intercept negative)."""
    n = len(sizes_bytes)
    mean_s, mean_t = sum(sizes_bytes) / n, sum(times_s) / n
    var = sum((s - mean_s) ** 2 for s in sizes_bytes)
    if n >= 2 and var > 0:
        slope = sum((s - mean_s) * (t - mean_t) for s, t in zip(sizes_bytes, times_s)) / var
        intercept = mean_t - slope * mean_s
        if slope > 0 and intercept >= 0:
            return intercept / 2, 1 / slope
    big = max(range(n), key=lambda i: sizes_bytes[i])
    return 0.0, sizes_bytes[big] / times_s[big]


def _allreduce_worker(rank: int, world: int, port: int, sizes: list[int], repeat: int, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # both ranks are on this machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        times: dict[int, list[float]] = {}
        for numel in sizes:
            x = torch.ones(numel, dtype=torch.float32)
            dist.all_reduce(x)  # warm-up (connections, buffers)
            times[numel] = []
            for _ in range(repeat):
                dist.barrier()
                start = time.perf_counter()
                dist.all_reduce(x)
                times[numel].append(time.perf_counter() - start)
        queue.put((rank, times))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_gloo(numel: int, repeat: int, world: int = 2, timeout_s: float = 300.0) -> dict:
    """Median seconds of a gloo all-reduce of ``numel`` and ``numel // 4`` fp32 elements among
    ``world`` local processes (per repeat the slowest rank counts), and the ring model fitted to them.
    A worker that dies (or a measurement past ``timeout_s``) is an error, not a hang."""
    import queue as queue_mod

    import torch.multiprocessing as mp

    sizes = sorted({max(1, numel // 4), numel})
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_allreduce_worker, args=(r, world, port, sizes, repeat, results)) for r in range(world)]
    for p in procs:
        p.start()
    per_rank: dict = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(per_rank) < world:
            try:
                rank, times = results.get(timeout=1.0)
                per_rank[rank] = times
            except queue_mod.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"gloo all-reduce worker exited with {dead[0]}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gloo all-reduce measurement took over {timeout_s:.0f} s") from None
        for p in procs:
            p.join(timeout=60)
            if p.exitcode != 0:
                raise RuntimeError(f"gloo all-reduce worker exited with {p.exitcode}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    medians = {n: statistics.median(max(ts) for ts in zip(*(per_rank[r][n] for r in per_rank))) for n in sizes}
    alpha, busbw = fit_ring([4.0 * n for n in sizes], [medians[n] for n in sizes])
    return {"backend": "gloo", "world": world, "repeat": repeat, "threads_per_process": 1,
            "median_s": {str(n): medians[n] for n in sizes}, "bytes": {str(n): 4 * n for n in sizes},
            "latency_s": alpha, "busbw_bytes_s": busbw}


# --------------------------------------------------------------------------------------------------
# Step times from a JSON file
# --------------------------------------------------------------------------------------------------

_KEY = re.compile(r"T(\d+)_p(\d+)(?:_b(\d+))?")
_MODE_ALIASES = {"fp32": ("fp32", "none"), "bf16": ("bf16",), "bf16_cl": ("bf16_cl",), "fp16": ("fp16",)}


def _shapes(entries: dict, batch: int | None) -> dict[Shape, float]:
    out = {}
    for k, v in entries.items():
        m = _KEY.fullmatch(k)
        seconds = v.get("median_s") if isinstance(v, dict) else v
        if m is None or seconds is None:
            continue
        b = int(m[3]) if m[3] else batch
        if b is None:
            raise ValueError(f"step time {k!r} has no batch and the file gives no batch_measured")
        out[(int(m[1]), int(m[2]), b)] = float(seconds)
    return out


def load_step_times(path: Path, mode: str) -> tuple[dict[Shape, float], str]:
    """Measured seconds per (T, patch, batch) for ``mode`` from a gpu_check, model_step_time or
    projection JSON, and a description of where they came from."""
    data = json.loads(Path(path).read_text())
    names = _MODE_ALIASES.get(mode, (mode,))
    if str(data.get("format", "")).startswith("mgvsr-gpu-check"):  # benchmarks/gpu_check.py
        times = {}
        for table in ("step_times", "scaled_batch_step_times"):
            for name in names:
                times.update(_shapes(data.get(table, {}).get(name, {}), None))
        source = f"gpu_check ({data.get('device')}), mode {mode}"
    elif "amp" in data and isinstance(data["amp"], dict):  # benchmarks/model_step_time.py
        amp = next((n for n in names if n in data["amp"]), None)
        if amp is None:
            raise ValueError(f"{path}: no step times for mode {mode!r} (has {', '.join(data['amp'])})")
        times = _shapes(data["amp"][amp]["median_step_s"], None)
        source = f"model_step_time ({data.get('device')}), amp {amp}" + (", channels_last" if data.get("channels_last") else "")
    elif "step_times" in data:  # benchmarks/projection.py
        times = _shapes(data["step_times"], data.get("batch_measured"))
        source = f"projection ({data.get('device')}), amp {data.get('amp')}"
    else:
        raise ValueError(f"{path}: not a step-time JSON of gpu_check.py, model_step_time.py or projection.py")
    if not times:
        raise ValueError(f"{path}: no step times for mode {mode!r}")
    return times, source


def compute_time_fn(measured: dict[Shape, float], full: tuple[int, int]) -> tuple[Callable[[int, int, int], float], set]:
    """``t_compute(T, patch, batch)``: the measured time, or the time at the nearest measured batch of
    that (T, patch) scaled by the full shape's batch curve (several batches measured there) or by
    the batch ratio. The returned set collects the shapes that were scaled."""
    curve = sorted((b, t) for (f, p, b), t in measured.items() if (f, p) == full)
    scaled: set = set()

    def relative(batch: int) -> float:
        """Full-shape step time at ``batch``: measured, interpolated between measured batches, or
        outside them proportional to the batch from the nearest end."""
        if len(curve) < 2:
            return float(batch)
        (b_lo, t_lo), (b_hi, t_hi) = curve[0], curve[-1]
        if batch <= b_lo or batch >= b_hi:
            return t_lo * batch / b_lo if batch <= b_lo else t_hi * batch / b_hi
        xs = [b for b, _ in curve]
        i = bisect.bisect_left(xs, batch)
        (b0, t0), (b1, t1) = curve[i - 1], curve[i]
        return t0 + (t1 - t0) * (batch - b0) / (b1 - b0)

    def t_compute(frames: int, patch: int, batch: int) -> float:
        if (frames, patch, batch) in measured:
            return measured[(frames, patch, batch)]
        batches = [b for (f, p, b) in measured if (f, p) == (frames, patch)]
        if not batches:
            raise KeyError(f"no step time measured at T={frames}, patch={patch}")
        b0 = min(batches, key=lambda b: (abs(math.log(b / batch)), b))
        scaled.add((frames, patch, batch))
        return measured[(frames, patch, b0)] * relative(batch) / relative(b0)

    return t_compute, scaled


# --------------------------------------------------------------------------------------------------
# Projection
# --------------------------------------------------------------------------------------------------


def project(cfg: Config, t_compute: Callable[[int, int, int], float], comm: dict[str, tuple[float, float]],
            grad_bytes: float, devices: list[int], factor: int, overlap: float) -> dict:
    """The reference runs on one device and, per comm model and N, the large-minibatch runs."""
    s = cfg.schedule
    reference = project_run(cfg, t_compute, with_flops=False)
    out: dict = {"reference": {"per_device_batch": s.batch_size, "iters": s.total_iters,
                               "fixed_s": reference["fixed_s"], "multigrid_s": reference["run_s"]},
                 "large_minibatch": {}}
    global_batch, iters = factor * s.batch_size, s.total_iters // factor
    for name, (latency, busbw) in comm.items():
        rows = []
        for n in devices:
            if global_batch % n:
                rows.append({"devices": n, "skipped": f"global batch {global_batch} is not divisible by {n}"})
                continue
            allreduce = ring_allreduce_s(grad_bytes, n, latency, busbw)
            big = cfg_with(cfg, batch_size=global_batch // n, total_iters=iters)
            r = project_run(big, lambda f, p, b: t_compute(f, p, b) + (1 - overlap) * allreduce, with_flops=False)
            rows.append({
                "devices": n, "per_device_batch": global_batch // n, "iters": iters, "allreduce_s": allreduce,
                "fixed_s": r["fixed_s"], "multigrid_s": r["run_s"],
                "fixed_speedup_vs_reference_fixed": reference["fixed_s"] / r["fixed_s"],
                "multigrid_speedup_vs_reference_fixed": reference["fixed_s"] / r["run_s"],
                "multigrid_vs_fixed": r["fixed_s"] / r["run_s"],
            })
        one = next((r for r in rows if r["devices"] == 1 and "fixed_s" in r), None)
        for r in rows:
            if one and "fixed_s" in r:
                r["scaling_efficiency_fixed"] = one["fixed_s"] / (r["devices"] * r["fixed_s"])
                r["scaling_efficiency_multigrid"] = one["multigrid_s"] / (r["devices"] * r["multigrid_s"])
        out["large_minibatch"][name] = {"latency_s": latency, "busbw_bytes_s": busbw, "rows": rows}
    return out


def cfg_with(cfg: Config, **schedule) -> Config:
    """``cfg`` with some schedule fields replaced."""
    return dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, **schedule))


def format_tables(result: dict) -> str:
    ref = result["projection"]["reference"]
    lines = [f"reference (1 device, batch {ref['per_device_batch']}, {ref['iters']} iterations): "
             f"fixed {ref['fixed_s'] / 3600:.2f} h, multigrid {ref['multigrid_s'] / 3600:.2f} h"]
    for name, block in result["projection"]["large_minibatch"].items():
        lines += ["", f"large minibatch x{result['batch_factor']}, all-reduce {name} (latency "
                  f"{block['latency_s'] * 1e6:.1f} us, bus bandwidth {block['busbw_bytes_s'] / 1e9:.2f} GB/s, "
                  f"overlap {result['overlap']:.2f}):",
                  f"{'N':>3}{'batch/dev':>10}{'iters':>9}{'allreduce':>11}{'fixed (h)':>11}{'mg (h)':>9}"
                  f"{'fixed x':>9}{'mg x':>8}{'mg/fixed':>9}{'eff mg':>8}"]
        for r in block["rows"]:
            if "skipped" in r:
                lines.append(f"{r['devices']:>3}  {r['skipped']}")
                continue
            eff = f"{r['scaling_efficiency_multigrid']:.2f}" if "scaling_efficiency_multigrid" in r else "-"
            lines.append(f"{r['devices']:>3}{r['per_device_batch']:>10}{r['iters']:>9}{r['allreduce_s'] * 1e3:>9.2f}ms"
                         f"{r['fixed_s'] / 3600:>11.2f}{r['multigrid_s'] / 3600:>9.2f}"
                         f"{r['fixed_speedup_vs_reference_fixed']:>8.2f}x{r['multigrid_speedup_vs_reference_fixed']:>7.2f}x"
                         f"{r['multigrid_vs_fixed']:>8.2f}x{eff:>8}")
    lines.append("(fixed x / mg x = the reference fixed run's time over the run's; mg/fixed = multigrid speedup at "
                 "the same N; eff mg = multigrid time on 1 device / (N x time on N), '-' without N = 1 in --devices)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", required=True, help="step-time JSON (gpu_check.py, model_step_time.py or projection.py)")
    p.add_argument("--mode", default="fp32", help="precision mode to read: fp32, bf16 or bf16_cl (default fp32)")
    p.add_argument("--config", default=str(REPO / "configs" / "basicvsr_reds_multigrid.yaml"),
                   help="multigrid config; its fixed baseline is the same with schedule.kind=fixed")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--batch-factor", type=int, default=4, help="k: global batch k x batch_size, total_iters / k iterations")
    p.add_argument("--overlap", type=float, default=0.0, help="share of the all-reduce hidden behind the backward pass")
    p.add_argument("--repeat", type=int, default=10, help="timed gloo all-reduces per size (median)")
    p.add_argument("--numel", type=int, default=None, help="gradient elements (default: the model's parameter count)")
    p.add_argument("--no-measure", action="store_true", help="do not measure gloo; use --gloo-latency-us / --gloo-busbw-gbs")
    p.add_argument("--gloo-latency-us", type=float, default=None)
    p.add_argument("--gloo-busbw-gbs", type=float, default=None)
    p.add_argument("--nccl-latency-us", type=float, default=NCCL_LATENCY_US,
                   help=f"assumed NCCL latency per ring step (default {NCCL_LATENCY_US} us)")
    p.add_argument("--nccl-busbw-gbs", type=float, default=NCCL_BUSBW_GBS,
                   help=f"assumed NCCL all-reduce bus bandwidth (default {NCCL_BUSBW_GBS} GB/s)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("overrides", nargs="*", help="dotted overrides of --config")
    args = p.parse_args(argv)
    if not 0 <= args.overlap <= 1:
        p.error("--overlap must be in [0, 1]")
    if args.batch_factor < 1 or min(args.devices) < 1:
        p.error("--batch-factor and --devices must be >= 1")
    if args.no_measure and (args.gloo_latency_us is None or args.gloo_busbw_gbs is None):
        p.error("--no-measure needs --gloo-latency-us and --gloo-busbw-gbs")
    overrides = [*args.overrides, "model.spynet_weights=null", "model.edvr_weights=null", "model.init_weights=null"]
    cfg = load_config(args.config, [*overrides, "schedule.kind=multigrid"])
    s = cfg.schedule
    if s.total_iters % args.batch_factor:
        p.error(f"schedule.total_iters={s.total_iters} is not divisible by --batch-factor {args.batch_factor}")
    command = shlex.join(["python", "benchmarks/ddp_projection.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"command: {command}\nmachine: {machine_info()}", flush=True)

    numel = args.numel
    if numel is None:
        from mgvsr.models import build_model

        numel = sum(t.numel() for t in build_model(cfg.model).parameters())
    grad_bytes = 4.0 * numel
    if args.no_measure:
        gloo = {"backend": "gloo", "given": True, "latency_s": args.gloo_latency_us * 1e-6,
                "busbw_bytes_s": args.gloo_busbw_gbs * 1e9}
    else:
        gloo = measure_gloo(numel, args.repeat)
        for n, t in gloo["median_s"].items():
            print(f"gloo all-reduce, 2 processes, {int(n) * 4 / 1e6:.2f} MB: median {t * 1e3:.2f} ms", flush=True)
    print(f"gloo ring fit: latency {gloo['latency_s'] * 1e6:.1f} us, bus bandwidth {gloo['busbw_bytes_s'] / 1e9:.2f} GB/s")

    measured, source = load_step_times(Path(args.steps), args.mode)
    t_compute, scaled = compute_time_fn(measured, (s.num_frames, s.patch_size))
    comm = {"gloo": (gloo["latency_s"], gloo["busbw_bytes_s"]),
            "nccl_assumed": (args.nccl_latency_us * 1e-6, args.nccl_busbw_gbs * 1e9)}
    result = {
        "command": command, "machine": machine_info(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": args.config, "overrides": args.overrides, "steps": args.steps, "step_source": source,
        "mode": args.mode, "grad_numel": numel, "grad_bytes": grad_bytes, "batch_factor": args.batch_factor,
        "overlap": args.overlap, "gloo": gloo,
        "nccl_assumptions": {"latency_us": args.nccl_latency_us, "busbw_gbs": args.nccl_busbw_gbs},
        "model": "t_step(N) = t_compute(T, patch, per-device batch) + (1 - overlap) * t_allreduce(N); "
                 "t_allreduce(N) = 2 (N-1) latency + 2 (N-1)/N * grad_bytes / busbw",
    }
    result["projection"] = project(cfg, t_compute, comm, grad_bytes, args.devices, args.batch_factor, args.overlap)
    result["scaled_shapes"] = [list(x) for x in sorted(scaled)]
    print(f"step times: {source} ({args.steps})")
    print(format_tables(result))
    if scaled:
        print(f"step times scaled from another batch: {', '.join(f'T{f}_p{q}_b{b}' for f, q, b in sorted(scaled))}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
