"""The benchmark's bookkeeping: variant parsing and presets, time-to-reach interpolation, paired
comparisons, timing checks of disturbed runs, and one real tiny benchmark (CPU records, failed run)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mgvsr import bench
from mgvsr.bench import (BenchError, compare, cpu_record, finished_run, format_table, mean_curve, parse_variant,
                         per_run, resolve_variants, time_to_reach, timing_check)
from mgvsr.cli import main
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


def test_auto_precision_settings_reuse_the_run_trained_with_what_they_resolved_to(tmp_path, monkeypatch):
    """Training saves amp/channels_last resolved; a config asking for ``auto`` must still find that run,
    and the table must say what the run computed in."""
    args = ["schedule.total_iters=40", "train.device=cpu", "train.name=x"]
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"steps": 40, "val_psnr_y": 30.0, "train_time_s": 9.0}))
    auto = load_config(None, [*args, "train.amp=auto", "train.channels_last=auto"])
    monkeypatch.setattr("mgvsr.runtime.bf16_is_native", lambda device: False)
    save_config(load_config(None, [*args, "train.amp=none", "train.channels_last=false"]), run_dir / "config.yaml")
    assert finished_run(run_dir, auto) is not None and bench.run_precision(run_dir) == "fp32"
    monkeypatch.setattr("mgvsr.runtime.bf16_is_native", lambda device: True)
    assert finished_run(run_dir, auto) is None  # here auto would mean bf16: a different run
    save_config(load_config(None, [*args, "train.amp=bf16", "train.channels_last=true"]), run_dir / "config.yaml")
    assert finished_run(run_dir, auto) is None  # channels_last auto is off on a CPU
    save_config(load_config(None, [*args, "train.amp=bf16", "train.channels_last=false"]), run_dir / "config.yaml")
    assert finished_run(run_dir, auto) is not None and bench.run_precision(run_dir) == "bf16"
    (run_dir / "config.yaml").write_text("train: {no_such_key: 1}\n")
    assert bench.run_precision(run_dir) == "?"


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


# ---- timing checks: is a run's time trustworthy? -------------------------------------------------


def _segment(wall, cpu, threads=2, other=0.0, resumed=False):
    return {"wall_s": wall, "cpu_s": cpu, "threads": threads, "other_share": other, "load_max": 2.0,
            "resumed": resumed}


def test_cpu_record_shares():
    # 100 s on 2 threads using 190 s of CPU: share 0.95. The machine (2 cores, 100 ticks/s) was busy
    # for 250 s of its 400 tick-seconds: 60 s of it not ours, 15% of its capacity.
    rec = cpu_record(100.0, 180.0, 10.0, 2, machine_busy=25_000, machine_total=20_000 * 2, ticks_per_s=100,
                     loads=[1.0, 2.5, 2.0])
    assert rec["cpu_s"] == pytest.approx(190.0)
    assert rec["cpu_share"] == pytest.approx(0.95)
    assert rec["other_share"] == pytest.approx(60.0 * 100 / 40_000)
    assert (rec["load_start"], rec["load_max"], rec["load_end"]) == (1.0, 2.5, 2.0)
    # without /proc/stat there is no other-processes share; the CPU share still works
    rec = cpu_record(10.0, 5.0, 0.0, 1, None, None, 100, [])
    assert rec["other_share"] is None and rec["cpu_share"] == pytest.approx(0.5)


def test_timing_check_flags_low_share_or_busy_machine():
    assert timing_check([_segment(100.0, 195.0)])["status"] == "ok"
    low = timing_check([_segment(100.0, 120.0)])  # share 0.60 (another job took the cores)
    assert low["status"] == "disturbed" and "CPU share 0.60 < 0.75" in low["reasons"][0]
    busy = timing_check([_segment(100.0, 195.0, other=0.3)])  # threads < cores: others ran beside it
    assert busy["status"] == "disturbed" and "30%" in busy["reasons"][0]
    assert timing_check([_segment(100.0, 160.0)])["status"] == "ok"  # 0.80: own serial phases
    assert timing_check([_segment(100.0, 185.0)], min_cpu_share=0.95)["status"] == "disturbed"
    assert timing_check([_segment(100.0, 195.0, other=0.3)], max_other_share=0.5)["status"] == "ok"
    # several processes (interrupted and resumed) are pooled by time: 0.5 and 1.0 over 10 s and 90 s
    pooled = timing_check([_segment(10.0, 10.0), _segment(90.0, 180.0, resumed=True)])
    assert pooled["cpu_share"] == pytest.approx(190.0 / 200.0) and pooled["status"] == "ok"
    assert timing_check(None)["status"] == "unchecked"
    assert timing_check([_segment(100.0, 195.0, resumed=True)])["status"] == "unchecked"  # first part unseen


def test_ratios_from_disturbed_runs_carry_a_warning():
    def timed(time, psnr_y, flops, share):
        run = _run(time, psnr_y, flops, [{"step": 1, "wall_time": time, "psnr_y": psnr_y}])
        run["cpu"] = {"segments": [_segment(time, 2 * time * share)]}
        return run

    results = {"baseline": [timed(100.0, 30.0, 1000.0, 0.98), timed(160.0, 30.0, 1000.0, 0.6)],
               "multigrid": [timed(50.0, 30.0, 500.0, 0.97), timed(55.0, 30.0, 500.0, 0.99)],
               "old": [_run(80.0, 30.0, 800.0, []), _run(80.0, 30.0, 800.0, [])]}
    table = compare(results, "baseline")
    assert table["baseline"]["timing_check"] == "disturbed"
    assert table["baseline"]["disturbed_runs"] == ["baseline seed 1"]
    # multigrid's own runs are fine, but its speedup uses the disturbed baseline of seed 1
    assert table["multigrid"]["timing_check"] == "ok"
    assert table["multigrid"]["ratio_warning"] == "disturbed: baseline seed 1"
    assert table["old"]["timing_check"] == "unchecked"
    runs = per_run(results, "baseline")
    assert [(r["variant"], r["seed"], r["timing_check"]["status"]) for r in runs][:3] == [
        ("baseline", 0, "ok"), ("baseline", 1, "disturbed"), ("multigrid", 0, "ok")]
    assert runs[3]["speedup"] == pytest.approx(160.0 / 55.0)
    text = format_table(table, "baseline", runs)
    row = next(line for line in text.splitlines() if line.startswith("multigrid "))
    assert "x!" in row and row.endswith("(disturbed: baseline seed 1)")
    assert "! DISTURBED timing (baseline seed 1: CPU share 0.60 < 0.75)" in text
    assert "? unchecked timing (old seed 0, old seed 1)" in text
    assert "per run" in text and text.count("disturbed") >= 3
    # with every run fine, the summary says so
    clean = {"baseline": results["baseline"][:1], "multigrid": results["multigrid"][:1]}
    text = format_table(compare(clean, "baseline"), "baseline", per_run(clean, "baseline"))
    assert "timing check: every run" in text and "!" not in text


# ---- variants: presets and errors -----------------------------------------------------------------


def test_presets_in_command_line_order():
    variants = resolve_variants([("preset", "basicsr"), ("variant", "mine:optim.lr=1e-3"), ("preset", "fast")])
    assert [v.name for v in variants] == ["basicsr", "mine", "fast"]
    assert variants[0].overrides[:2] == ["schedule.kind=fixed", "train.amp=none"]
    assert variants[1].overrides == ["optim.lr=1e-3"]
    assert "train.amp=auto" in variants[2].overrides and "train.channels_last=auto" in variants[2].overrides
    fast = resolve_variants([("preset", "all")])[-1]
    assert fast.name == "fast" and "schedule.kind=multigrid" in fast.overrides
    assert "model.zero_init_output=true" in fast.overrides
    assert "model.zero_init_output=true" not in resolve_variants([("preset", "basicsr")])[0].overrides
    for name, (_, overrides) in bench.PRESETS.items():  # every preset is a valid config
        load_config(Path(__file__).resolve().parents[1] / "configs" / "bench.yaml", overrides)
    assert [v.name for v in resolve_variants(None)] == ["baseline", "multigrid"]
    with pytest.raises(BenchError, match="unknown preset 'fastest'"):
        resolve_variants([("preset", "fastest")])
    with pytest.raises(BenchError, match="variant 'fast' is given twice"):
        resolve_variants([("preset", "fast"), ("variant", "fast:optim.lr=1e-3")])


def test_bad_override_is_one_line_error_before_any_training(tmp_path, capsys):
    code = main(["bench", "--out", str(tmp_path / "b"), "--variant", "ok:", "--variant", "bad:schedule.kind=multigird"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("mgvsr bench: error: variant bad: schedule.kind") and "Traceback" not in err
    assert not (tmp_path / "b").exists()


# ---- a real (tiny) benchmark in subprocesses ------------------------------------------------------


def _clips(root: Path, clips: int, frames: int, size: int = 64) -> Path:
    rng = np.random.default_rng(len(str(root)))
    for c in range(clips):
        folder = root / f"clip{c}"
        folder.mkdir(parents=True)
        base = np.kron(rng.random((size // 4 + frames, size // 4 + frames, 3)), np.ones((4, 4, 1)))
        for t in range(frames):
            Image.fromarray((base[t : t + size, t : t + size] * 255).astype(np.uint8)).save(folder / f"{t:03d}.png")
    return root


def test_bench_records_cpu_use_and_reports_a_failed_run(tmp_path, capsys, monkeypatch):
    """One real training process (a tiny BasicVSR, 2 steps on one thread) whose CPU record must be
    sane, then a failing run: one line naming the run and its log, exit code 2, no traceback."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "basicvsr", "num_feat": 4, "num_block": 1, "head_feat": 4},
        "data": {"train": {"kind": "frames", "root": str(_clips(tmp_path / "train", 2, 4))},
                 "val": {"kind": "frames", "root": str(_clips(tmp_path / "val", 1, 3))}, "num_workers": 0},
        "schedule": {"kind": "fixed", "total_iters": 2, "num_frames": 3, "patch_size": 16, "batch_size": 1},
        "optim": {"fix_flow_iters": 0},
        "train": {"val_every": 1, "save_every": 2, "tensorboard": False, "progress": False},
    }))
    out = tmp_path / "bench"
    args = ["bench", "--config", str(config), "--out", str(out), "--threads", "1", "--variant", "tiny:"]
    # The second variant's training process fails (a stand-in for a real failure such as a missing
    # dataset, which would cost this test another torch start-up).
    real_command = bench.train_command
    crash = "import sys; print('Traceback (most recent call last):'); print('DataError: no such folder'); sys.exit(1)"
    monkeypatch.setattr(bench, "train_command", lambda config, args: (
        [sys.executable, "-c", crash] if "train.name=broken_seed0" in args else real_command(config, args)))
    code = main([*args, "--variant", f"broken:data.train.root={tmp_path / 'missing'}"])
    captured = capsys.readouterr()
    log = out / "broken_seed0" / "train_output.log"
    assert code == 2 and "Traceback" not in captured.err
    assert captured.err.strip() == f"mgvsr bench: error: run broken (seed 0) failed with exit code 1; see {log}"
    assert "DataError: no such folder" in log.read_text()  # the failed run's own output is kept for reading
    assert "DataError: no such folder" in captured.out  # and was shown as it happened
    assert "timing check:" in captured.out

    segments = json.loads((out / "tiny_seed0" / "bench_cpu.json").read_text())["segments"]
    assert len(segments) == 1 and segments[0]["exit_code"] == 0 and segments[0]["threads"] == 1
    assert segments[0]["cpu_s"] > 0 and 0 < segments[0]["cpu_share"] <= 1.5
    assert segments[0]["wall_s"] > 0 and segments[0]["load_max"] >= 0
    assert segments[0]["other_share"] is None or 0 <= segments[0]["other_share"] <= 1
    assert "=== " in (out / "tiny_seed0" / "train_output.log").read_text()

    # the finished run is reused with its CPU records; the table names its timing verdict
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "reusing the finished run" in captured.out
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"]["tiny"][0]["cpu"]["segments"] == segments
    assert saved["per_run"][0]["timing_check"]["status"] in ("ok", "disturbed")
    assert saved["table"]["tiny"]["timing_check"] == saved["per_run"][0]["timing_check"]["status"]
    assert main([*args, "--report", "--min-cpu-share", "0"]) == 0
    assert json.loads((out / "results.json").read_text())["timing_thresholds"]["min_cpu_share"] == 0


def test_plot_gives_each_variant_one_colour_and_each_seed_a_line_style(tmp_path, monkeypatch):
    """12 runs (4 variants x 3 seeds) outnumber matplotlib's 10 default colours: the bench plot colours by
    variant and tells seeds apart by line style, so no two variants share a colour."""
    import matplotlib.axes

    from mgvsr.tracking import plot_psnr_vs_time

    drawn: list[tuple[str, str, str]] = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append((kwargs["label"], kwargs["color"], kwargs["linestyle"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    curve = [{"wall_time": 1.0, "psnr_y": 30.0}, {"wall_time": 2.0, "psnr_y": 31.0}]
    variants = ["basicsr", "multigrid", "zero_init", "fast"]
    labels = {f"{v} (seed {s})": v for s in range(3) for v in variants}
    out = plot_psnr_vs_time({label: curve for label in labels}, tmp_path / "p.png", groups=labels)
    assert out.exists() and len(drawn) == 12
    colour = {v: {c for label, c, _ in drawn if labels[label] == v} for v in variants}
    assert all(len(c) == 1 for c in colour.values()) and len(set.union(*colour.values())) == 4
    for v in variants:
        assert [ls for label, _, ls in drawn if labels[label] == v] == ["-", "--", ":"]
