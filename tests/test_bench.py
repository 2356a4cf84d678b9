"""The benchmark's bookkeeping: variant parsing, time-to-reach interpolation, paired comparisons."""

import pytest

from mgvsr.bench import compare, format_table, parse_variant, time_to_reach


def test_parse_variant_keeps_list_commas():
    name, overrides = parse_variant("mg:schedule.spatial_stages=[32,64],schedule.kind=multigrid")
    assert name == "mg"
    assert overrides == ["schedule.spatial_stages=[32,64]", "schedule.kind=multigrid"]
    assert parse_variant("base:") == ("base", [])
    with pytest.raises(SystemExit):
        parse_variant(":a=1")


def test_time_to_reach_interpolates_linearly():
    curve = [{"wall_time": 10.0, "psnr_y": 28.0}, {"wall_time": 20.0, "psnr_y": 30.0},
             {"wall_time": 30.0, "psnr_y": 31.0}]
    assert time_to_reach(curve, 29.0) == pytest.approx(15.0)
    assert time_to_reach(curve, 27.0) == 10.0
    assert time_to_reach(curve, 31.0) == 30.0
    assert time_to_reach(curve, 31.5) is None


def _run(time, psnr_y, flops, curve):
    return {"train_time_s": time, "flops": flops, "data_wait_share": 0.01, "val_psnr": psnr_y - 1,
            "val_ssim": 0.8, "val_psnr_y": psnr_y, "val_ssim_y": 0.9, "curve": curve}


def test_compare_pairs_runs_by_seed():
    base = [_run(100.0, 30.0, 1000.0, [{"wall_time": 50.0, "psnr_y": 29.0}, {"wall_time": 100.0, "psnr_y": 30.0}]),
            _run(120.0, 30.2, 1000.0, [{"wall_time": 120.0, "psnr_y": 30.2}])]
    mg = [_run(40.0, 30.1, 400.0, [{"wall_time": 20.0, "psnr_y": 29.5}, {"wall_time": 40.0, "psnr_y": 30.1}]),
          _run(60.0, 30.1, 400.0, [{"wall_time": 60.0, "psnr_y": 30.1}])]
    table = compare({"baseline": base, "multigrid": mg}, "baseline")
    row = table["multigrid"]
    assert row["speedup"] == pytest.approx((100 / 40 + 120 / 60) / 2)  # median of two = mean
    assert row["flop_ratio"] == pytest.approx(2.5)
    assert row["speedup_over_flop_ratio"] == pytest.approx(row["speedup"] / 2.5)
    assert row["psnr_y_diff"] == pytest.approx(((30.1 - 30.0) + (30.1 - 30.2)) / 2)
    # seed 1 never reaches the baseline's 30.2 dB, so no time-to-reach is claimed
    assert row["time_to_reach_ref_speedup"] is None
    assert table["baseline"]["speedup"] == pytest.approx(1.0)
    assert "multigrid" in format_table(table, "baseline")


def test_reach_within_tolerance():
    base = [_run(100.0, 30.0, 1000.0, [{"wall_time": 100.0, "psnr_y": 30.0}])]
    mg = [_run(50.0, 29.97, 500.0, [{"wall_time": 25.0, "psnr_y": 29.0}, {"wall_time": 50.0, "psnr_y": 29.97}])]
    row = compare({"baseline": base, "multigrid": mg}, "baseline")["multigrid"]
    assert row["time_to_reach_ref_speedup"] is None  # never reaches 30.0 exactly
    # 29.95 dB (= 30.0 - 0.05) is reached at 25 + 25 * 0.95 / 0.97 s
    assert row["time_to_reach_ref_tol_speedup"] == pytest.approx(100.0 / (25.0 + 25.0 * 0.95 / 0.97))
