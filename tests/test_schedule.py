"""Schedule (shapes + LR multiplier), FLOP counting and `mgvsr schedule`."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mgvsr import flops
from mgvsr.cli import main
from mgvsr.config import Config, ConfigError, ModelConfig, OptimConfig, ScheduleConfig, load_config
from mgvsr.schedule import (
    Phase,
    ShapeFn,
    frames_for,
    large_batch_factor,
    lr_range,
    patch_for,
    phases,
    spec_at,
    split_iters,
)

REPO = Path(__file__).resolve().parents[1]


def make_cfg(optim: dict | None = None, **schedule) -> Config:
    return Config(schedule=ScheduleConfig(**schedule), optim=OptimConfig(**(optim or {})))


def small_multigrid(**kw) -> Config:
    args = dict(kind="multigrid", total_iters=100, num_frames=15, patch_size=64, spatial_stages=[32, 48, 64])
    args.update(kw)
    return make_cfg(**args)


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def test_multigrid_phase_table_is_exact():
    got = [(p.stage, p.start, p.end, p.num_frames, p.patch_size, p.batch_size) for p in phases(small_multigrid())]
    # Stage bounds round(100 * k/3) = 33, 67, 100 -> 33, 34, 33 steps; each stage split the same way.
    assert got == [
        (0, 0, 11, 8, 32, 4),
        (0, 11, 22, 11, 32, 4),
        (0, 22, 33, 15, 32, 4),
        (1, 33, 44, 8, 48, 4),
        (1, 44, 56, 11, 48, 4),
        (1, 56, 67, 15, 48, 4),
        (2, 67, 78, 8, 64, 4),
        (2, 78, 89, 11, 64, 4),
        (2, 89, 100, 15, 64, 4),
    ]
    assert [p.index for p in phases(small_multigrid())] == list(range(9))


def test_clip_length_and_patch_rounding():
    assert [frames_for(f, 15) for f in (0.5, 0.75, 1.0)] == [8, 11, 15]
    assert frames_for(0.5, 5) == 3  # 2.5 rounds half up
    assert frames_for(0.3, 5) == 2  # 1.5 -> 2
    assert frames_for(0.1, 15) == 2  # at least 2 frames
    assert frames_for(0.5, 1) == 1  # never more than the full clip
    assert [patch_for(f, 64) for f in (0.5, 0.71, 1.0)] == [32, 45, 64]
    assert patch_for(0.1, 64) == 16  # SPyNet minimum


@pytest.mark.parametrize("total", [1, 2, 7, 10, 99, 1000, 300_000])
@pytest.mark.parametrize("shares", [None, [1, 2, 1], [0.1, 0.7, 0.2], [3, 3, 3]])
def test_split_iters_sums_exactly(total, shares):
    parts = split_iters(total, shares, 3)
    assert sum(parts) == total and all(p >= 0 for p in parts)
    weights = shares or [1, 1, 1]
    for part, w in zip(parts, weights):
        assert abs(part - total * w / sum(weights)) <= 1  # rounding moves at most one step


def test_split_iters_uneven_shares():
    assert split_iters(10, [1, 2, 1], 3) == [3, 5, 2]  # boundaries 2.5 -> 3, 7.5 -> 8
    assert split_iters(100, None, 3) == [33, 34, 33]


def test_stage_and_temporal_shares_and_empty_phases_dropped():
    cfg = small_multigrid(total_iters=20, stage_shares=[1, 1, 2], temporal_shares=[1, 1, 2])
    table = phases(cfg)
    assert sum(p.iters for p in table) == 20
    assert [p.iters for p in table if p.stage == 2] == [3, 2, 5]  # 10 steps split 2.5 -> 3, 5, 10
    tiny = phases(small_multigrid(total_iters=4))  # fewer steps than nominal phases
    assert sum(p.iters for p in tiny) == 4 and all(p.iters > 0 for p in tiny)
    assert [p.index for p in tiny] == list(range(len(tiny)))


def test_fixed_schedule_is_one_phase():
    (only,) = phases(make_cfg(kind="fixed", total_iters=50))
    assert only == Phase(0, 0, 0, 50, 15, 64, 4)


def test_cycles_scale_batch_within_budget_and_cap():
    cfg = make_cfg(kind="cycles", total_iters=80, scale_batch=True, max_batch=64, long_cycles=2)
    budget = 4 * 15 * 64 * 64
    table = phases(cfg)
    assert [(p.num_frames, p.patch_size, p.batch_size) for p in table[:4]] == [
        (8, 32, 30),
        (8, 45, 15),
        (15, 45, 8),
        (15, 64, 4),
    ]
    assert [p.stage for p in table] == [0, 0, 0, 0, 1, 1, 1, 1]
    for p in table:
        assert p.batch_size * p.num_frames * p.patch_size**2 <= budget
        assert (p.batch_size + 1) * p.num_frames * p.patch_size**2 > budget or p.batch_size == 64
    capped = phases(dataclasses.replace(cfg, schedule=dataclasses.replace(cfg.schedule, max_batch=16)))
    assert [p.batch_size for p in capped[:4]] == [16, 15, 8, 4]


def test_scale_batch_scales_lr_linearly():
    base = make_cfg(kind="cycles", total_iters=40, lr_policy="constant")
    scaled = make_cfg(kind="cycles", total_iters=40, lr_policy="constant", scale_batch=True)
    for step in (0, 15, 39):
        a, b = spec_at(base, step), spec_at(scaled, step)
        assert b.lr_mult == pytest.approx(a.lr_mult * b.batch_size / 4)


def test_multigrid_can_scale_batch_too():
    table = phases(small_multigrid(scale_batch=True))
    assert table[0].batch_size == (4 * 15 * 64 * 64) // (8 * 32 * 32) == 30
    assert table[-1].batch_size == 4


# --------------------------------------------------------------------------------------------------
# Learning rate
# --------------------------------------------------------------------------------------------------


def test_cosine_endpoints_and_midpoint():
    cfg = make_cfg(kind="fixed", total_iters=101, lr_policy="cosine")
    floor = cfg.optim.eta_min / cfg.optim.lr
    assert spec_at(cfg, 0).lr_mult == 1.0
    assert spec_at(cfg, 100).lr_mult == pytest.approx(floor)
    assert spec_at(cfg, 50).lr_mult == pytest.approx(floor + (1 - floor) / 2)
    mults = [spec_at(cfg, k).lr_mult for k in range(101)]
    assert all(a >= b for a, b in zip(mults, mults[1:]))


def test_warmup_is_linear_from_small_value():
    cfg = make_cfg(kind="fixed", total_iters=100, lr_policy="constant", warmup_iters=10)
    assert [spec_at(cfg, k).lr_mult for k in range(11)] == pytest.approx([(k + 1) / 10 for k in range(10)] + [1])
    cos = make_cfg(kind="fixed", total_iters=100, lr_policy="cosine", warmup_iters=10)
    plain = make_cfg(kind="fixed", total_iters=100, lr_policy="cosine")
    assert spec_at(cos, 4).lr_mult == pytest.approx(spec_at(plain, 4).lr_mult * 0.5)
    assert spec_at(cos, 50).lr_mult == spec_at(plain, 50).lr_mult


def test_cosine_over_whole_multigrid_run_ignores_stages():
    cfg = small_multigrid(lr_policy="cosine")
    floor = cfg.optim.eta_min / cfg.optim.lr
    assert spec_at(cfg, 33).lr_mult == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 33 / 99)))
    assert spec_at(cfg, 99).lr_mult == pytest.approx(floor)


def test_cosine_restart_per_stage_with_restart_warmup():
    cfg = small_multigrid(lr_policy="cosine_restart", warmup_iters=5, restart_warmup_iters=4)
    floor = cfg.optim.eta_min / cfg.optim.lr
    # Stage 0 is steps 0..32: initial warmup, then the cosine ends at the floor on step 32.
    assert spec_at(cfg, 0).lr_mult == pytest.approx(0.2)
    assert spec_at(cfg, 32).lr_mult == pytest.approx(floor)
    # Stage 1 starts at 33 (34 steps): restart warmup over 4 steps on top of the restarted cosine.
    assert spec_at(cfg, 33).lr_mult == pytest.approx(0.25)
    cos = lambda k, n: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * k / (n - 1)))  # noqa: E731
    assert spec_at(cfg, 35).lr_mult == pytest.approx(0.75 * cos(2, 34))
    assert spec_at(cfg, 37).lr_mult == pytest.approx(cos(4, 34))
    assert spec_at(cfg, 66).lr_mult == pytest.approx(floor)
    # Without restart warmup a stage starts at the full LR.
    plain = small_multigrid(lr_policy="cosine_restart")
    assert spec_at(plain, 67).lr_mult == 1.0 and spec_at(plain, 99).lr_mult == pytest.approx(floor)


def test_constant_policy():
    cfg = small_multigrid(lr_policy="constant")
    assert {spec_at(cfg, k).lr_mult for k in range(100)} == {1.0}


@pytest.mark.parametrize(
    "scaling, world, accum, ref, expected",
    [
        ("none", 8, 4, 0, 1.0),
        ("linear", 1, 1, 4, 1.0),
        ("linear", 8, 1, 4, 8.0),
        ("linear", 8, 2, 16, 4.0),
        ("sqrt", 8, 2, 16, 2.0),
        ("sqrt", 2, 1, 32, 0.5),
    ],
)
def test_large_minibatch_lr_scaling(scaling, world, accum, ref, expected):
    cfg = make_cfg(
        optim=dict(lr_scaling=scaling, accum_steps=accum, ref_batch=ref),
        kind="fixed",
        total_iters=20,
        lr_policy="constant",
        warmup_iters=4,
    )
    assert large_batch_factor(cfg, world) == pytest.approx(expected)
    assert spec_at(cfg, 10, world_size=world).lr_mult == pytest.approx(expected)
    assert spec_at(cfg, 1, world_size=world).lr_mult == pytest.approx(expected * 2 / 4)  # gradual warmup


def test_warmup_from_base_starts_at_the_unscaled_lr():
    """Goyal et al.: a 4x batch with linear scaling warms up from optim.lr (x1) to 4x, linearly."""
    cfg = make_cfg(optim=dict(lr_scaling="linear", ref_batch=2), kind="fixed", batch_size=8, total_iters=40,
                   lr_policy="constant", warmup_iters=10, warmup_from="base")
    mults = [spec_at(cfg, k).lr_mult for k in range(12)]
    assert mults[0] == pytest.approx(1.0)  # the base LR exactly
    assert mults[5] == pytest.approx(1.0 + 3.0 * 5 / 10)
    assert mults[10:] == pytest.approx([4.0, 4.0])
    assert all(b > a for a, b in zip(mults[:10], mults[1:11]))
    # without large-minibatch scaling there is nothing to ramp from
    flat = make_cfg(kind="fixed", total_iters=40, lr_policy="constant", warmup_iters=10, warmup_from="base")
    assert [spec_at(flat, k).lr_mult for k in range(12)] == pytest.approx([1.0] * 12)
    # lr_range stays exact with it
    (phase,) = phases(cfg)
    lo, hi = lr_range(cfg, phase)
    assert lo == pytest.approx(min(spec_at(cfg, k).lr_mult for k in range(40)))
    assert hi == pytest.approx(max(spec_at(cfg, k).lr_mult for k in range(40)))


def test_lr_range_brackets_every_step():
    cfg = small_multigrid(lr_policy="cosine_restart", warmup_iters=15, restart_warmup_iters=5)
    for p in phases(cfg):
        lo, hi = lr_range(cfg, p)
        values = [spec_at(cfg, k).lr_mult for k in range(p.start, p.end)]
        assert (lo, hi) == (pytest.approx(min(values)), pytest.approx(max(values)))


# --------------------------------------------------------------------------------------------------
# spec_at / phases / ShapeFn agree
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        small_multigrid(total_iters=37, stage_shares=[2, 1, 1]),
        small_multigrid(total_iters=50, scale_batch=True, lr_policy="cosine_restart"),
        make_cfg(kind="cycles", total_iters=45, long_cycles=3, scale_batch=True),
        make_cfg(kind="fixed", total_iters=9),
    ],
)
def test_spec_at_agrees_with_phases_for_every_step(cfg):
    table = phases(cfg)
    shape_fn = pickle.loads(pickle.dumps(ShapeFn(cfg)))
    assert table[0].start == 0 and table[-1].end == cfg.schedule.total_iters
    assert all(a.end == b.start for a, b in zip(table, table[1:]))
    for p in table:
        for step in range(p.start, p.end):
            spec = spec_at(cfg, step)
            assert (spec.step, spec.phase, spec.stage) == (step, p.index, p.stage)
            assert (spec.num_frames, spec.patch_size, spec.batch_size) == (p.num_frames, p.patch_size, p.batch_size)
            assert shape_fn(step) == (p.num_frames, p.patch_size, p.batch_size)
            assert spec.lr_mult > 0


def test_step_outside_run_is_an_error():
    cfg = small_multigrid()
    with pytest.raises(ValueError, match="total_iters = 100"):
        spec_at(cfg, 100)
    with pytest.raises(ValueError, match="outside the run"):
        spec_at(cfg, -1)
    with pytest.raises(ValueError, match="world_size"):
        spec_at(cfg, 0, world_size=0)
    assert ShapeFn(cfg)(100) == ShapeFn(cfg)(99)  # a prefetching loader may run past the end


@pytest.mark.parametrize(
    "override, needle",
    [
        ("schedule.spatial_stages=[32, 96]", "schedule.spatial_stages"),
        ("schedule.restart_warmup_iters=-1", "schedule.restart_warmup_iters"),
        ("schedule.long_cycles=0", "schedule.long_cycles"),
        ("schedule.cycle_shapes=[]", "schedule.cycle_shapes"),
        ("schedule.temporal_fractions=[0.5, 1.5]", "schedule.temporal_fractions"),
        ("schedule.max_batch=2", "schedule.max_batch"),
    ],
)
def test_bad_schedule_settings_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_config(None, ["data.train.root=/x", "schedule.kind=multigrid", override])


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------


class TinyVSR(nn.Module):
    """Stand-in with the model interface: (B, T, 3, h, w) -> (B, T, 3, 4h, 4w), convs + a warp."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, cfg.num_feat, 3, padding=1)
        self.tail = nn.Conv2d(cfg.num_feat, 3 * 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        feat = F.relu(self.body(x.reshape(b * t, c, h, w)))
        grid = torch.zeros(b * t, h, w, 2, device=x.device, dtype=x.dtype)
        feat = F.grid_sample(feat, grid, align_corners=True)
        return F.pixel_shuffle(self.tail(feat), 4).reshape(b, t, 3, 4 * h, 4 * w)


@pytest.fixture
def tiny_builder(monkeypatch):
    flops.clear_cache()
    monkeypatch.setattr(flops, "_default_builder", lambda: TinyVSR)
    yield TinyVSR
    flops.clear_cache()


def expected_tiny_flops(num_feat: int, t: int, p: int, b: int = 1) -> int:
    body = 2 * 3 * num_feat * 9 * p * p
    tail = 2 * num_feat * 48 * 9 * p * p
    # backward: body needs only its weight gradient (the input does not require grad); tail both.
    return b * t * (body + tail + body + 2 * tail)


def test_flops_of_a_conv_net_are_exact_and_linear_in_pixels(tiny_builder):
    cfg = ModelConfig(num_feat=8)
    assert flops.train_flops(cfg, 4, 16) == expected_tiny_flops(8, 4, 16)
    assert flops.train_flops(cfg, 8, 16) == 2 * flops.train_flops(cfg, 4, 16)
    assert flops.train_flops(cfg, 2, 32) == flops.train_flops(cfg, 8, 16)  # same T*h*w
    assert flops.train_flops(cfg, 4, 16, batch=3) == 3 * flops.train_flops(cfg, 4, 16)


def test_meta_count_matches_cpu_and_flop_counter_mode():
    model = TinyVSR(ModelConfig(num_feat=8))
    cpu = flops.count_train_flops(model, 3, 16, batch=2)
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind
    with torch.device("meta"):
        meta_model = TinyVSR(ModelConfig(num_feat=8))
    assert flops.count_train_flops(meta_model, 3, 16, batch=2) == cpu
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(torch.rand(2, 3, 3, 16, 16)).mean().backward()
    assert cpu == counter.get_total_flops() == expected_tiny_flops(8, 3, 16, 2)


def test_weight_paths_do_not_matter_and_counts_are_cached(tiny_builder):
    a = flops.train_flops(ModelConfig(num_feat=8), 2, 16)
    b = flops.train_flops(ModelConfig(num_feat=8, init_weights="/nonexistent.pth"), 2, 16)
    assert a == b and len(flops._FLOPS) == 1


def test_multigrid_flop_ratio_below_one(tiny_builder):
    from mgvsr.schedule_cli import schedule_report

    cfg = small_multigrid()
    cfg.model = ModelConfig(num_feat=8)
    report = schedule_report(cfg, cost="flops")
    pixels = schedule_report(cfg, cost="pixels")
    # For a pure conv net FLOPs are proportional to B*T*h*w, so both cost models agree exactly.
    assert report["cost_vs_fixed"] == pytest.approx(pixels["cost_vs_fixed"])
    expected = sum(p.iters * p.num_frames * p.patch_size**2 for p in phases(cfg)) / (100 * 15 * 64**2)
    assert report["cost_vs_fixed"] == pytest.approx(expected) and expected < 0.5
    assert sum(r["compute_share"] for r in report["phases"]) == pytest.approx(1.0)


def test_real_model_flops_on_meta():
    pytest.importorskip("mgvsr.models")
    from mgvsr.models import build_model

    cfg = ModelConfig(num_feat=4, num_block=1)
    with torch.device("meta"):
        model = build_model(cfg)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, 3, 16, 16, device="meta")).mean().backward()
    small = flops.train_flops(cfg, 3, 16)
    assert small == counter.get_total_flops()
    large = flops.train_flops(cfg, 3, 32)
    assert 0 < small < large
    assert flops.train_flops(cfg, 5, 16) > small


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "mg.yaml"
    path.write_text(
        "model: {num_feat: 4, num_block: 1}\n"
        "data: {train: {root: /data/reds}}\n"
        "schedule:\n  kind: multigrid\n  total_iters: 100\n  num_frames: 6\n  patch_size: 32\n"
        "  spatial_stages: [16, 24, 32]\n  warmup_iters: 5\n"
    )
    return path


def test_cli_prints_table(tmp_path, capsys):
    assert main(["schedule", str(write_config(tmp_path)), "--cost", "pixels"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 9
    assert rows[0][:6] == ["0", "0", "0-10", "3", "16", "4"]
    assert rows[-1][:6] == ["8", "2", "89-99", "6", "32", "4"]
    assert rows[-1][-2] == "1.000"
    expected = sum(p.iters * p.num_frames * p.patch_size**2 for p in phases(load_config(write_config(tmp_path))))
    assert f"{expected / (100 * 6 * 32**2):.3f}" in out.splitlines()[-1]


def test_cli_json_with_real_flops_and_overrides(tmp_path, capsys):
    pytest.importorskip("mgvsr.models")
    args = ["schedule", str(write_config(tmp_path)), "--world-size", "4", "schedule.total_iters=60", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_iters"] == 60 and report["world_size"] == 4 and report["global_batch"] == 16
    assert sum(r["iters"] for r in report["phases"]) == 60
    assert 0 < report["cost_vs_fixed"] < 1 and report["phases"][-1]["step_cost"] == pytest.approx(1.0)


def test_cli_bad_config_is_reported(tmp_path, capsys):
    assert main(["schedule", str(write_config(tmp_path)), "schedule.kind=bogus", "--cost", "pixels"]) == 2
    assert "schedule.kind" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("**/*.yaml")), ids=lambda p: p.name)
def test_cli_on_repo_configs(path, capsys):
    assert main(["schedule", str(path), "--cost", "pixels"]) == 0
    assert "estimated cost vs fixed baseline" in capsys.readouterr().out
