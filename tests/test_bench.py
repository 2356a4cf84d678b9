"""The benchmark's bookkeeping: variant parsing, time-to-reach interpolation, paired comparisons."""

import json

import pytest

from mgvsr.bench import compare, finished_run, format_table, mean_curve, parse_variant, time_to_reach
from mgvsr.config import load_config, save_config


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


def test_finished_run_is_reused_only_for_the_same_config(tmp_path):
    cfg = load_config(None, ["schedule.total_iters=40", "train.seed=1", "train.out_dir=runs/a", "train.name=x"])
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    assert finished_run(run_dir, cfg) is None  # nothing there
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "summary.json").write_text(json.dumps({"steps": 40, "val_psnr_y": 30.0, "train_time_s": 9.0}))
    assert finished_run(run_dir, cfg)["train_time_s"] == 9.0
    # another output folder or progress setting computes the same run
    same = load_config(None, ["schedule.total_iters=40", "train.seed=1", "train.out_dir=runs/b",
                              "train.progress=false"])
    assert finished_run(run_dir, same) is not None
    for change in (["train.seed=2"], ["optim.lr=1e-3"], ["schedule.total_iters=80"]):
        other = load_config(None, ["schedule.total_iters=40", "train.seed=1", *change])
        assert finished_run(run_dir, other) is None, change
    # an unfinished run (interrupted before its last step) is not reused
    (run_dir / "summary.json").write_text(json.dumps({"steps": 20, "val_psnr_y": 30.0}))
    assert finished_run(run_dir, cfg) is None
    (run_dir / "summary.json").write_text("{truncated")
    assert finished_run(run_dir, cfg) is None


def test_reach_of_the_seed_averaged_curve():
    c0 = [{"step": 10, "wall_time": 10.0, "psnr_y": 29.0}, {"step": 20, "wall_time": 20.0, "psnr_y": 30.0}]
    c1 = [{"step": 10, "wall_time": 12.0, "psnr_y": 28.0}, {"step": 20, "wall_time": 22.0, "psnr_y": 29.8},
          {"step": 30, "wall_time": 32.0, "psnr_y": 29.9}]
    assert mean_curve([c0, c1]) == [{"step": 10, "wall_time": 11.0, "psnr_y": 28.5},
                                    {"step": 20, "wall_time": 21.0, "psnr_y": pytest.approx(29.9)}]
    base = [_run(100.0, 30.0, 1000.0, [{"step": 20, "wall_time": 100.0, "psnr_y": 30.0}]),
            _run(120.0, 30.2, 1000.0, [{"step": 20, "wall_time": 120.0, "psnr_y": 30.2}])]
    mg = [_run(20.0, 30.0, 400.0, c0), _run(22.0, 29.8, 400.0, c1[:2])]
    row = compare({"baseline": base, "multigrid": mg}, "baseline")["multigrid"]
    assert row["time_to_reach_ref_tol_speedup"] is None  # seed 1 never gets within 0.05 dB of 30.2
    # averaged: target 30.1 - 0.05 = 30.05 is never reached by the mean curve (29.9 at its end) either
    assert row["time_to_reach_ref_tol_mean_speedup"] is None
    mg[1] = _run(22.0, 30.2, 400.0, [{"step": 10, "wall_time": 12.0, "psnr_y": 28.0},
                                     {"step": 20, "wall_time": 22.0, "psnr_y": 30.2}])
    row = compare({"baseline": base, "multigrid": mg}, "baseline")["multigrid"]
    # mean curve (11 s, 28.5), (21 s, 30.1): 30.05 at 11 + 10 * 1.55 / 1.6 s; mean reference time 110 s
    assert row["time_to_reach_ref_tol_mean_speedup"] == pytest.approx(110.0 / (11.0 + 10.0 * 1.55 / 1.6))
