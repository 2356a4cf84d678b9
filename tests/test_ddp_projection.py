"""benchmarks/ddp_projection.py: the ring all-reduce model, reading step-time files, the N-device
projection's arithmetic, and a tiny real gloo measurement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "basicvsr_reds_multigrid.yaml"  # 300k iterations, batch 4, T 15, patch 64
SHAPES = [(t, p) for p in (32, 48, 64) for t in (8, 11, 15)]


@pytest.fixture(scope="module")
def ddp():
    return load_benchmark("ddp_projection")


def test_ring_model_and_its_fit(ddp):
    assert ddp.ring_allreduce_s(1e6, 1, 1e-3, 1e9) == 0.0
    assert ddp.ring_allreduce_s(1e6, 2, 1e-5, 1e9) == pytest.approx(2e-5 + 1e-3)
    assert ddp.ring_allreduce_s(8e6, 8, 1e-5, 1e9) == pytest.approx(14e-5 + 2 * 7 / 8 * 8e-3)
    sizes = [1e5, 4e5, 1.6e6]
    alpha, busbw = ddp.fit_ring(sizes, [2 * 3e-5 + s / 2e9 for s in sizes])
    assert alpha == pytest.approx(3e-5) and busbw == pytest.approx(2e9)
    # Noise that makes the intercept negative: no latency, bandwidth from the largest size.
    assert ddp.fit_ring([1e5, 4e5], [1e-5, 4.5e-4]) == (0.0, pytest.approx(4e5 / 4.5e-4))


def _gpu_check_json(path: Path, per_pixel: float, sweep: dict[int, float] | None = None) -> Path:
    """Step times in gpu_check's format, linear in T x patch^2 x batch."""
    times = {f"T{t}_p{p}_b4": {"median_s": per_pixel * t * p * p * 4} for t, p in SHAPES}
    for b, seconds in (sweep or {}).items():
        times[f"T15_p64_b{b}"] = {"median_s": seconds}
    path.write_text(json.dumps({"format": "mgvsr-gpu-check-v1", "device": "cuda",
                                "step_times": {"fp32": times}, "scaled_batch_step_times": {"fp32": {}}}))
    return path


def test_projection_arithmetic(ddp, tmp_path):
    """Compute linear in the batch and free communication: N devices take 1/N of the time, and the large
    minibatch on one device takes as long as the reference. Communication only adds."""
    steps = _gpu_check_json(tmp_path / "steps.json", per_pixel=1e-6)
    out = tmp_path / "free.json"
    assert ddp.main(["--steps", str(steps), "--config", str(CONFIG), "--no-measure", "--gloo-latency-us", "0",
                     "--gloo-busbw-gbs", "1e12", "--numel", "1000", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    ref = data["projection"]["reference"]
    full = 1e-6 * 15 * 64 * 64 * 4
    assert ref["fixed_s"] == pytest.approx(300_000 * full)
    rows = {r["devices"]: r for r in data["projection"]["large_minibatch"]["gloo"]["rows"]}
    assert [rows[n]["per_device_batch"] for n in (1, 2, 4, 8)] == [16, 8, 4, 2]
    assert all(r["iters"] == 75_000 for r in rows.values())
    assert rows[1]["fixed_s"] == pytest.approx(ref["fixed_s"], rel=1e-4)
    assert rows[1]["multigrid_s"] == pytest.approx(ref["multigrid_s"], rel=1e-4)
    for n in (2, 4, 8):
        assert rows[n]["multigrid_s"] == pytest.approx(rows[1]["multigrid_s"] / n, rel=1e-6)
        assert rows[n]["scaling_efficiency_fixed"] == pytest.approx(1.0, rel=1e-5)
    assert rows[8]["multigrid_vs_fixed"] == pytest.approx(ref["fixed_s"] / ref["multigrid_s"], rel=1e-4)
    assert [15, 64, 16] in data["scaled_shapes"]  # measured at batch 4 only: scaled linearly

    nccl = {r["devices"]: r for r in data["projection"]["large_minibatch"]["nccl_assumed"]["rows"]}
    assert nccl[1]["allreduce_s"] == 0 and nccl[1]["fixed_s"] == pytest.approx(rows[1]["fixed_s"])
    expected = ddp.ring_allreduce_s(4000, 8, 5e-6, 400e9)
    assert nccl[8]["allreduce_s"] == pytest.approx(expected)
    assert nccl[8]["fixed_s"] == pytest.approx(rows[8]["fixed_s"] + 75_000 * expected)
    # Half of it hidden behind the backward pass: half the added time.
    half = tmp_path / "half.json"
    assert ddp.main(["--steps", str(steps), "--config", str(CONFIG), "--no-measure", "--gloo-latency-us", "0",
                     "--gloo-busbw-gbs", "1e12", "--numel", "1000", "--overlap", "0.5", "--json", str(half)]) == 0
    nccl_half = {r["devices"]: r for r in json.loads(half.read_text())["projection"]["large_minibatch"]["nccl_assumed"]["rows"]}
    assert nccl_half[8]["fixed_s"] == pytest.approx(rows[8]["fixed_s"] + 75_000 * expected / 2)


def test_batch_curve_from_the_sweep(ddp, tmp_path):
    """With several batches measured at the full shape, other batches follow that curve (not the ratio)."""
    measured, _ = ddp.load_step_times(_gpu_check_json(tmp_path / "s.json", 1e-6, sweep={2: 0.2, 8: 0.5}), "fp32")
    t_compute, scaled = ddp.compute_time_fn(measured, (15, 64))
    t4 = measured[(15, 64, 4)]
    assert t_compute(15, 64, 4) == t4 and not scaled
    assert t_compute(15, 64, 6) == pytest.approx(t4 + (0.5 - t4) * 2 / 4)  # between the measured batches
    assert t_compute(15, 64, 16) == pytest.approx(0.5 * 2)  # beyond them: proportional from the end
    small = measured[(8, 32, 4)]
    assert t_compute(8, 32, 8) == pytest.approx(small * 0.5 / t4) and (8, 32, 8) in scaled
    with pytest.raises(KeyError, match="T=9"):
        t_compute(9, 32, 4)


def test_reads_other_step_time_files(ddp, tmp_path):
    mst = tmp_path / "mst.json"
    mst.write_text(json.dumps({"device": "cpu", "amp": {"none": {"median_step_s": {"T15_p64_b4": 2.0}},
                                                         "bf16": {"median_step_s": {"T15_p64_b4": 1.0}}}}))
    assert ddp.load_step_times(mst, "fp32")[0] == {(15, 64, 4): 2.0}
    assert ddp.load_step_times(mst, "bf16")[0] == {(15, 64, 4): 1.0}
    with pytest.raises(ValueError, match="bf16_cl"):
        ddp.load_step_times(mst, "bf16_cl")
    proj = tmp_path / "proj.json"
    proj.write_text(json.dumps({"device": "cpu", "amp": "none", "batch_measured": 1, "step_times": {"T8_p32": 0.5}}))
    assert ddp.load_step_times(proj, "fp32")[0] == {(8, 32, 1): 0.5}


def test_gloo_allreduce_is_measured(ddp):
    r = ddp.measure_gloo(4096, repeat=2)
    assert set(r["median_s"]) == {"1024", "4096"} and all(t > 0 for t in r["median_s"].values())
    assert r["latency_s"] >= 0 and r["busbw_bytes_s"] > 0


def test_efficiency_column_without_one_device_says_so(ddp, tmp_path, capsys):
    """--devices without 1 has no single-device run to compare with: the table shows '-', not nan."""
    steps = _gpu_check_json(tmp_path / "steps.json", per_pixel=1e-6)
    assert ddp.main(["--steps", str(steps), "--config", str(CONFIG), "--devices", "4", "--no-measure",
                     "--gloo-latency-us", "0", "--gloo-busbw-gbs", "1e12", "--numel", "1000"]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.split()[:2] == ["4", "4"])
    assert row.split()[-1] == "-" and "nan" not in printed
