"""benchmarks/gpu_check.py: the tiny CPU run writes a complete, self-consistent JSON; the time budget
skips and shortens what does not fit and says so."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc():
    return load_benchmark("gpu_check")


def test_tiny_run_on_cpu(gc, tmp_path, capsys, monkeypatch):
    """Every stage at toy sizes on a device without native bf16: fp32 step times of every schedule shape,
    the bf16 modes recorded as skipped, the scaled-batch shapes, a projection that matches its own step
    times, and a 2-iteration basicsr-vs-fast bench (mgvsr bench's presets; fast computes in fp32 where bf16 is not native)."""
    monkeypatch.setattr(gc, "bf16_is_native", lambda device: False)  # the same on every CPU
    out = tmp_path / "check.json"
    # Generous budgets: a loaded CI machine must not turn this into a budget test (that one is below).
    assert gc.main(["--tiny", "--device", "cpu", "--json", str(out), "--bench-threads", "1", "--warmup", "0",
                    "--budget-s", "1200", "--stage-budgets", "400", "200", "100", "500"]) == 0
    data = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert data["format"] == gc.FORMAT and data["device"] == "cpu" and data["settings"]["tiny"]
    assert json.loads(printed.split("== results (JSON)\n")[1]) == data  # the JSON is printed too
    assert "== summary" in printed and data["failures"] == []

    # Tiny schedule: LR patches 16 -> 24 x T 2 -> 4 at batch 2; the full shape is the last phase's.
    full = tuple(data["settings"]["full_shape"])
    assert full == (4, 24, 2) and data["shapes"] == [[2, 16, 2], [4, 16, 2], [2, 24, 2], [4, 24, 2]]
    for shape in data["shapes"]:
        entry = data["step_times"]["fp32"][gc.key(tuple(shape))]
        assert entry["median_s"] > 0 and entry["n"] == 1 and entry["min_s"] <= entry["median_s"] <= entry["max_s"]
        assert entry["first_step_s"] > 0 and entry["wall_s"] >= entry["median_s"]
    assert data["step_times"]["fp32"]["T4_p24_b4"]["median_s"] > 0  # the batch sweep at the full shape
    assert data["settings"]["bf16"] == {"native": False, "forced": False, "skipped_modes": ["bf16", "bf16_cl"],
                                        "reason": "bf16 not native on this device"}
    scaled_shapes = [tuple(s) for s in data["scaled_batch_shapes"]]
    assert scaled_shapes == [(2, 16, 8), (4, 16, 4), (2, 24, 4)]  # Wu et al.: batch x (full pixels / pixels), <= 8
    for mode in ("bf16", "bf16_cl"):
        for table, shapes in (("step_times", data["shapes"] + data["sweep_shapes"]), ("scaled_batch_step_times", scaled_shapes)):
            assert all(data[table][mode][gc.key(tuple(s))] == {"skipped": "bf16 not native on this device"} for s in shapes)
        assert data["projection"][mode]["multigrid"] == {"skipped": "bf16 not native on this device"}
    assert all(data["scaled_batch_step_times"]["fp32"][gc.key(s)]["median_s"] > 0 for s in scaled_shapes)

    # The projection is sum(iterations x step time) over the schedule table in the same file.
    for mode in ("fp32",):
        times = {**data["step_times"][mode], **data["scaled_batch_step_times"][mode]}
        for name in ("multigrid", "multigrid_scaled_batch"):
            proj = data["projection"][mode][name]
            table = data["schedule"][name]
            assert sum(p["iters"] for p in table) == data["settings"]["total_iters"]
            run = sum(p["iters"] * times[f"T{p['T']}_p{p['patch']}_b{p['batch']}"]["median_s"] for p in table)
            assert proj["run_s"] == pytest.approx(run, rel=1e-9)
            assert proj["fixed_s"] == pytest.approx(data["settings"]["total_iters"] * times[gc.key(full)]["median_s"])
            assert proj["speedup"] == pytest.approx(proj["fixed_s"] / proj["run_s"])
            assert proj["speedup_vs_basicsr"] == pytest.approx(
                data["projection"]["fp32"]["multigrid"]["fixed_s"] / proj["run_s"])
        assert data["projection"][mode]["multigrid"]["flop_ratio"] > 1  # SPyNet (resizing to 32 px) dominates a toy model
        # Without batch scaling every phase has the full batch: equal iterations = equal samples.
        plain = data["projection"][mode]["multigrid"]
        assert plain["run_equal_samples_s"] == pytest.approx(plain["run_s"])
    assert data["projection"]["fp32"]["multigrid"]["speedup_vs_basicsr"] == pytest.approx(
        data["projection"]["fp32"]["multigrid"]["speedup"])

    sbs = data["side_by_side"]
    assert "error" not in sbs and "skipped" not in sbs, sbs
    assert sbs["iters"] == 2 and [r["variant"] for r in sbs["runs"]] == ["basicsr", "fast"]
    for r in sbs["runs"]:
        assert r["train_time_s"] > 0 and math.isfinite(r["val_psnr_y"]) and r["val_psnr_y"] > 10
    assert sbs["config"]["model"]["num_feat"] == 4 and "basicsr" in sbs["table"]
    assert sbs["config"]["schedule"]["spatial_stages"] == [16, 24]
    assert not Path(sbs["work_dir"].split(" ")[0]).exists()  # cleaned up

    for stage in gc.STAGES:
        assert data["budget"]["stages"][stage]["used_s"] >= 0 and "error" not in data["budget"]["stages"][stage]
    assert 0 < data["budget"]["elapsed_s"] <= data["budget"]["total_s"]

    # ddp_projection reads this file (shapes at another batch are scaled by the full shape's batch curve).
    ddp = load_benchmark("ddp_projection")
    proj_out = tmp_path / "ddp.json"
    assert ddp.main(["--steps", str(out), "--mode", "fp32", "--no-measure", "--gloo-latency-us", "50",
                     "--gloo-busbw-gbs", "1", "--numel", "1000", "--json", str(proj_out), *gc.TINY_OVERRIDES]) == 0
    rows = json.loads(proj_out.read_text())["projection"]["large_minibatch"]["gloo"]["rows"]
    assert [r["per_device_batch"] for r in rows] == [8, 4, 2, 1]


def test_force_bf16_times_the_bf16_modes(gc, tmp_path, monkeypatch):
    """--force-bf16 times bf16 and bf16 + channels_last even where bf16 is emulated (one minimal shape:
    emulated bf16 is slow) and projects them like fp32."""
    monkeypatch.setattr(gc, "bf16_is_native", lambda device: False)
    out = tmp_path / "bf16.json"
    minimal = ["model.num_feat=4", "model.head_feat=4", "schedule.num_frames=2", "schedule.patch_size=16",
               "schedule.spatial_stages=[16]", "schedule.temporal_fractions=[1.0]", "schedule.batch_size=1",
               "schedule.max_batch=1"]
    assert gc.main(["--tiny", "--device", "cpu", "--json", str(out), "--force-bf16", "--warmup", "0",
                    "--sweep-batches", "", "--stages", "step_times,projection", *minimal]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["bf16"]["forced"] and not data["settings"]["bf16"]["skipped_modes"]
    assert data["shapes"] == [[2, 16, 1]]
    for mode in ("fp32", "bf16", "bf16_cl"):
        assert data["step_times"][mode]["T2_p16_b1"]["median_s"] > 0
        assert data["projection"][mode]["multigrid"]["speedup"] == pytest.approx(1.0)  # one shape: no gain
    assert data["budget"]["stages"]["side_by_side"]["skipped"] == "not selected (--stages)"


def test_no_time_left_skips_every_stage_and_says_so(gc, tmp_path):
    out = tmp_path / "check.json"
    assert gc.main(["--tiny", "--device", "cpu", "--json", str(out), "--budget", "0"]) == 0
    data = json.loads(out.read_text())
    assert all("skipped" in r for r in data["step_times"]["fp32"].values())
    assert any("time budget" in n for n in data["budget"]["stages"]["step_times"]["notes"])
    assert data["projection"]["fp32"]["multigrid"]["error"].startswith("no step time for")
    assert "time budget" in data["side_by_side"]["skipped"]


class _FakeTimer:
    """Stands in for StepTimer: every step 'takes' ``seconds`` (reported, not slept)."""

    def __init__(self, seconds=1.0, fail=None, sleep=False, first=None):
        import torch

        self.device, self.seconds, self.fail, self.calls = torch.device("cpu"), seconds, fail, 0
        self.sleep, self.first = sleep, first
        self.opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

    def inputs(self, shape):
        return None, None

    def step(self, lr, hr):
        self.calls += 1
        if self.fail:
            raise self.fail
        seconds = self.first if self.calls == 1 and self.first is not None else self.seconds
        if self.sleep:
            time.sleep(seconds)
        return seconds

    def close(self):
        pass


def test_measure_shortens_to_its_fair_share_and_reports_oom(gc):
    # Past its fair share a measurement still keeps MIN_TIMED timed steps (single-step medians are noise).
    timer = _FakeTimer(seconds=1.0, first=4.0)
    r = gc.measure(timer, (2, 16, 1), warmup=1, repeat=5, deadline=float("inf"), fair_share_s=0.5)
    assert gc.MIN_TIMED == 3 and r["n"] == 3 and r["median_s"] == 1.0 and "3 of 5" in r["shortened"]
    assert timer.calls == 4 and r["first_step_s"] == 4.0 and r["wall_s"] >= 0
    one = gc.measure(_FakeTimer(1.0), (2, 16, 1), warmup=1, repeat=5, deadline=float("inf"), fair_share_s=0.5,
                     min_timed=1)
    assert one["n"] == 1 and "1 of 5" in one["shortened"]
    full = gc.measure(_FakeTimer(0.0), (2, 16, 1), warmup=0, repeat=5, deadline=float("inf"), fair_share_s=10)
    assert full["n"] == 5 and "shortened" not in full and full["first_step_s"] == 0.0
    # The stage deadline cuts even below MIN_TIMED: steps of 0.2 s, 0.5 s to the deadline -> 2 steps.
    cut = gc.measure(_FakeTimer(0.2, sleep=True), (2, 16, 1), warmup=0, repeat=5,
                     deadline=time.monotonic() + 0.5, fair_share_s=0.0)
    assert cut["n"] == 2 and "2 of 5" in cut["shortened"]
    assert gc.measure(_FakeTimer(fail=RuntimeError("CUDA out of memory. Tried to allocate")), (2, 16, 1), 1, 3,
                      float("inf"), 10) == {"error": "out of memory"}
    with pytest.raises(RuntimeError, match="shape mismatch"):
        gc.measure(_FakeTimer(fail=RuntimeError("shape mismatch")), (2, 16, 1), 1, 3, float("inf"), 10)


def test_time_shapes_expects_the_overhead_seen_so_far(gc, monkeypatch):
    """A measurement is expected to cost its steps plus the median overhead of the ones before it (the
    first step of a new shape on a GPU: cuDNN autotuning); what does not fit the stage is skipped."""
    monkeypatch.setattr(gc, "StepTimer", lambda cfg, mode, device: _FakeTimer(0.01))
    budget = gc.Budget(5.0, {"step_times": 5.0, "scaled_batch": 0.0, "projection": 0.0, "side_by_side": 0.0})
    items = [("fp32", (2, 16, 1)), ("fp32", (4, 16, 1))]
    results = {"fp32": {}}
    overheads: list[float] = []
    gc.time_shapes(None, items, results, "step_times", budget, None, warmup=1, repeat=3, overheads=overheads)
    assert all(results["fp32"][gc.key(s)]["n"] == 3 for _, s in items) and len(overheads) == 2
    assert all(o >= 0 for o in overheads) and overheads[0] == gc.overhead_s(results["fp32"]["T2_p16_b1"], 1)
    # With 10 s of overhead per measurement seen before, nothing fits a 5 s stage.
    results = {"fp32": {"T2_p16_b1": {"median_s": 0.01}}}
    gc.time_shapes(None, items[1:], results, "step_times", budget, None, warmup=1, repeat=3, overheads=[10.0])
    assert results["fp32"]["T4_p16_b1"]["skipped"].endswith("about 10 s needed")
    assert any("skipped fp32 T4_p16_b1" in n for n in budget.report["step_times"]["notes"])


def test_channels_last_clip_keeps_values(gc):
    import torch

    x = torch.rand(2, 3, 3, 5, 7)
    y = gc.channels_last_clip(x)
    assert torch.equal(x, y) and y.permute(0, 1, 3, 4, 2).is_contiguous() and not y.is_contiguous()


def test_a_failed_stage_exits_non_zero_and_keeps_the_others(gc, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("bench exploded")

    monkeypatch.setattr(gc, "side_by_side", broken)
    out = tmp_path / "check.json"
    assert gc.main(["--tiny", "--device", "cpu", "--json", str(out), "--budget-s", "0"]) == 1
    data = json.loads(out.read_text())
    assert data["failures"] == ["side_by_side: RuntimeError: bench exploded"]
    assert "error" not in data["budget"]["stages"]["step_times"] and "projection" in data


def test_shell_script_picks_the_cpu_scale_without_cuda(tmp_path):
    """gpu_check.sh without a GPU: adds --tiny --device cpu, says so, passes the other flags through."""
    import os
    import subprocess

    out = tmp_path / "sh.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out", str(out), "--budget-s", "0"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "running the CPU scale" in proc.stdout and "gpu_check.py --tiny --device cpu --out" in proc.stdout
    data = json.loads(out.read_text())
    assert data["settings"]["tiny"] and data["device"] == "cpu" and data["budget"]["total_s"] == 0


def test_shell_script_finds_python3_when_there_is_no_python(tmp_path):
    """Images such as the GPU machine's ship only `python3`: without PYTHON the script falls back to it."""
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"  # a wrapper, not a symlink: a venv's interpreter must keep its own path
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update(PATH=os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--help"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"gpu_check: {bin_dir / 'python3'} benchmarks/gpu_check.py --help" in proc.stdout
    assert "--budget-s" in proc.stdout
