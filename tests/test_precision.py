"""Precision, memory layout and per-step overhead: channels_last and bf16 for every model (forward, a
training run, eval / upscale), the float32 grid of flow warping, fused Adam with its device-side skip,
the foreach EMA, the non-finite skip without host reads, and exact resume with the new options on."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from mgvsr.config import ModelConfig, OptimConfig, load_config
from mgvsr.evaluation.runner import InferenceOptions, run_clip
from mgvsr.models import build_model
from mgvsr.models.blocks import flow_warp
from mgvsr.optim import EMA, make_optimizer, optimizer_step, supports_found_inf
from mgvsr.runtime import channels_last_model, is_channels_last, to_channels_last_clip

MODELS = {
    "basicvsr": {"name": "basicvsr", "num_feat": 4, "num_block": 1, "head_feat": 4},
    "iconvsr": {"name": "iconvsr", "num_feat": 8, "num_block": 1, "head_feat": 4, "keyframe_stride": 2,
                "temporal_padding": 1},
    "edvr": {"name": "edvr", "num_feat": 8, "num_block": 1, "num_frame": 3, "deformable_groups": 2,
             "num_extract_block": 1, "head_feat": 4},
    "basicvsrpp": {"name": "basicvsrpp", "num_feat": 8, "num_block": 1, "head_feat": 4},
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**MODELS[name]))


def _smooth_clip(b: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(B, T, 3, h, w) in [0, 1]: a smooth texture panning by one pixel per frame."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(b, 3, h // 4 + 4, w // 4 + 4, generator=gen),
                                           size=(h + t, w + t), mode="bicubic", align_corners=False).clamp(0, 1)
    return torch.stack([base[..., i : i + h, i : i + w] for i in range(t)], dim=1).contiguous()


# ---- layout helpers --------------------------------------------------------------------------------


def test_channels_last_clip_keeps_values_and_makes_every_frame_channels_last():
    x = torch.rand(2, 3, 3, 5, 7)
    y = to_channels_last_clip(x)
    assert torch.equal(x, y) and y.shape == x.shape and y.stride(2) == 1
    assert all(is_channels_last(y[:, t]) for t in range(3))
    assert y.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert not is_channels_last(x[:, 0])
    assert to_channels_last_clip(y).data_ptr() == y.data_ptr()  # already in that layout: no copy
    assert to_channels_last_clip(x[:, 0]).is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match=r"\(B, T, C, H, W\)"):
        to_channels_last_clip(torch.rand(3, 4))


def test_flow_warp_keeps_the_layout_and_samples_in_float32_under_bf16_autocast():
    feat = torch.rand(2, 4, 64, 64)
    flow = torch.rand(2, 64, 64, 2) * 3 - 1.5
    ref = flow_warp(feat, flow)
    assert is_channels_last(flow_warp(feat.contiguous(memory_format=torch.channels_last), flow))
    torch.testing.assert_close(flow_warp(feat.contiguous(memory_format=torch.channels_last), flow), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = flow_warp(feat.bfloat16(), flow)
    assert low.dtype == torch.bfloat16
    # Only the features' own rounding remains: the positions are those of the float32 grid (a bf16 grid
    # would be off by up to 1/16 px here).
    expected = flow_warp(feat.bfloat16().float(), flow).bfloat16()
    assert torch.equal(low, expected)


# ---- every model: forward in channels_last and bf16 -----------------------------------------------


def _input(name: str, b: int = 1) -> torch.Tensor:
    return _smooth_clip(b, 3, 12, 16)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_forward_and_backward_equal_the_contiguous_model(name):
    model = _model(name).train()
    cl_model = channels_last_model(copy.deepcopy(model))
    x = _input(name, b=2)
    out = model(x)
    out_cl = cl_model(to_channels_last_clip(x))
    torch.testing.assert_close(out_cl, out, rtol=1e-4, atol=1e-5)
    out.square().mean().backward()
    out_cl.square().mean().backward()
    for (key, p), p_cl in zip(model.named_parameters(), cl_model.parameters()):
        assert p_cl.grad is not None or p.grad is None, key
        if p.grad is not None:
            torch.testing.assert_close(p_cl.grad, p.grad, rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bf16_autocast_forward_is_close_to_float32(name):
    model = channels_last_model(_model(name).eval())
    x = to_channels_last_clip(_input(name))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    assert torch.isfinite(low).all()
    assert (low - ref).abs().max() < 0.05  # bf16 keeps ~3 significant digits


# ---- training runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for c in range(2):
        base = np.kron(rng.random((17, 17, 3)), np.ones((4, 4, 1)))  # 68x68: 64x64 HR frames, 16x16 LR
        folder = root / f"clip{c}"
        folder.mkdir()
        for t in range(4):
            Image.fromarray((base[t : t + 64, t : t + 64] * 255).astype(np.uint8)).save(folder / f"{t:04d}.png")
    return root


def _config(tmp_path: Path, frames_root: Path, name: str, out: str = "runs", **train) -> Path:
    frames = 3
    cfg = {
        "model": MODELS[name],
        "data": {"train": {"kind": "frames", "root": str(frames_root)}, "num_workers": 0},
        "schedule": {"kind": "fixed", "total_iters": 4, "num_frames": frames, "patch_size": 16, "batch_size": 2},
        "optim": {"lr": 1e-3, "fix_flow_iters": 1, "ema_decay": 0.9},
        "train": {"name": name, "out_dir": str(tmp_path / out), "log_every": 1, "val_every": 0, "save_every": 2,
                  "tensorboard": False, "progress": False, "amp": "auto", "channels_last": True, **train},
    }
    path = tmp_path / f"{name}_{out}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_auto_amp_channels_last_training_run_and_exact_resume(name, tmp_path, frames_root):
    """amp=auto: bf16 where the CPU has native bf16, else float32 (an AVX2 CPU emulates bf16 ~40x
    slower, far too slow for a unit test; bf16 numerics are covered by the forward tests above).
    Adam is the default implementation (fused on CPU)."""
    from mgvsr.train import train

    summary = train(load_config(_config(tmp_path, frames_root, name)))
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"]) and summary["skipped_steps"] == 0
    run = tmp_path / "runs" / name
    rows = _rows(run / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(np.isfinite(float(r["loss"])) for r in rows)
    # Resume from step 2 in another folder: bit-identical weights and EMA.
    ckpt = run / "checkpoints" / "ckpt_00000002.pt"
    train(load_config(_config(tmp_path, frames_root, name, out="resumed"), [f"train.resume={ckpt}"]))
    for weights in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(run / "weights" / weights), load_file(tmp_path / "resumed" / name / "weights" / weights)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (weights, key)


def test_non_finite_steps_are_skipped_on_the_device_and_counted_between_logs(tmp_path, frames_root, monkeypatch):
    """With log_every=4 the host reads nothing on steps 1-3 and 5-7: the NaN losses of steps 2 and 6-8
    are skipped on the device, counted, and the streak stops the run at the first read after it
    reaches max_bad_steps; the weights of the skipped steps stay those of the last good step."""
    import mgvsr.train as train_mod

    real_loss, calls = train_mod.sr_loss, {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] in (2, 6, 7, 8, 9, 10) else loss

    monkeypatch.setattr(train_mod, "sr_loss", flaky_loss)
    reads = []
    real_record = train_mod.Progress.record

    def record(self, result, read):
        reads.append(read)
        return real_record(self, result, read)

    monkeypatch.setattr(train_mod.Progress, "record", record)
    path = _config(tmp_path, frames_root, "basicvsr", log_every=4, save_every=100, max_bad_steps=2,
                   amp="none", channels_last=False)
    cfg = load_config(path, ["schedule.total_iters=12", "optim.fix_flow_iters=0"])
    with pytest.raises(train_mod.NonFiniteError, match=r"3 consecutive steps .*\(last at step 7\)"):
        train_mod.train(cfg)
    assert reads[:4] == [False, False, False, True]  # no read on steps that do not log
    rows = _rows(tmp_path / "runs" / "basicvsr" / "train_log.csv")
    assert [int(r["step"]) for r in rows] == [4, 8] and [int(r["skipped"]) for r in rows] == [1, 4]
    assert len(reads) == 8  # stopped at the step-8 read: steps 6, 7, 8 in a row >= max_bad_steps


def test_a_bad_streak_that_ends_between_reads_still_stops_the_run(tmp_path, frames_root, monkeypatch):
    """Steps 2 and 3 (1-based) are bad, step 4 is good and is the first read: the device-side record
    of the longest streak still reaches max_bad_steps=2 and stops the run at that read."""
    import mgvsr.train as train_mod

    real_loss, calls = train_mod.sr_loss, {"n": 0}

    def flaky_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] in (2, 3) else loss

    monkeypatch.setattr(train_mod, "sr_loss", flaky_loss)
    path = _config(tmp_path, frames_root, "basicvsr", log_every=4, save_every=100, max_bad_steps=2,
                   amp="none", channels_last=False)
    cfg = load_config(path, ["schedule.total_iters=8", "optim.fix_flow_iters=0"])
    with pytest.raises(train_mod.NonFiniteError, match=r"2 consecutive steps .*ended before step 3"):
        train_mod.train(cfg)
    assert calls["n"] == 4


def test_skipped_step_leaves_weights_moments_and_ema_exactly_unchanged():
    model = _model("basicvsr")
    opt = make_optimizer(model, OptimConfig(lr=1e-2))
    ema = EMA(model, 0.9)
    x = _smooth_clip(1, 2, 8, 8)
    for found_inf in (0.0, 1.0):
        model(x).mean().backward()
        before = ([p.detach().clone() for p in model.parameters()],
                  copy.deepcopy(opt.state_dict()["state"]), copy.deepcopy(ema.state_dict()))
        optimizer_step(opt, torch.tensor(found_inf))
        ema.update(model, skip=torch.tensor(found_inf > 0))
        opt.zero_grad(set_to_none=True)
        changed = [not torch.equal(a, p) for a, p in zip(before[0], model.parameters())]
        if found_inf:
            assert not any(changed)
            state = opt.state_dict()["state"]
            for i, s in before[1].items():
                for k in ("step", "exp_avg", "exp_avg_sq"):
                    assert torch.equal(s[k], state[i][k]), (i, k)
            assert all(torch.equal(v, ema.state_dict()[k]) for k, v in before[2].items())
        else:
            assert any(changed) and any(not torch.equal(v, ema.state_dict()[k]) for k, v in before[2].items())
    assert supports_found_inf(opt)
    assert not hasattr(opt, "found_inf")  # the flag does not outlive the step


def test_foreach_ema_equals_the_per_tensor_update_bit_for_bit():
    model = _model("basicvsr")
    ema = EMA(model, 0.999)
    reference = copy.deepcopy(ema.model.state_dict())
    for step in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ema.update(model, skip=torch.tensor(False) if step % 2 else None)
        for name, value in model.state_dict().items():  # the update as it was written before
            reference[name].mul_(0.999).add_(value, alpha=1 - 0.999)
        for name, value in ema.state_dict().items():
            assert torch.equal(value, reference[name]), name


def test_fused_adam_matches_the_single_tensor_adam_within_float_tolerance():
    model = _model("basicvsr")
    twin = copy.deepcopy(model)
    cfg = OptimConfig(lr=1e-3)
    fused = make_optimizer(model, cfg)
    assert fused.param_groups[0]["fused"] or fused.param_groups[0]["foreach"]
    single = torch.optim.Adam([{"params": list(g["params"]), "lr": g["lr"]} for g in make_optimizer(twin, cfg).param_groups],
                              lr=cfg.lr, betas=tuple(cfg.betas), foreach=False)
    x = _smooth_clip(1, 2, 8, 8)
    for _ in range(5):
        for m, opt in ((model, fused), (twin, single)):
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (key, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


def test_adam_impl_picks_the_implementation_and_plain_is_the_former_optimizer_bit_for_bit():
    """``plain`` reproduces the optimiser mgvsr built before fused Adam (torch's default Adam, the
    single-tensor loop on CPU) exactly; ``auto`` is fused on CPU; ``foreach`` is the multi-tensor one."""
    flags = {impl: make_optimizer(_model("basicvsr"), OptimConfig(adam_impl=impl)).param_groups[0]
             for impl in ("auto", "fused", "foreach", "plain")}
    assert flags["auto"]["fused"] and flags["fused"]["fused"]
    assert flags["foreach"]["foreach"] and not flags["foreach"]["fused"]
    assert not flags["plain"]["foreach"] and not flags["plain"]["fused"]

    model, twin = _model("basicvsr"), _model("basicvsr")
    cfg = OptimConfig(lr=1e-3, adam_impl="plain")
    plain = make_optimizer(model, cfg)
    former = torch.optim.Adam([{"params": list(g["params"]), "lr": g["lr"]} for g in make_optimizer(twin, cfg).param_groups],
                              lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    x = _smooth_clip(1, 2, 16, 16)
    for _ in range(3):
        for m, opt in ((model, plain), (twin, former)):
            m(x).square().mean().backward()
            optimizer_step(opt, torch.tensor(0.0))
            opt.zero_grad(set_to_none=True)
    for (key, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), key


def test_adam_impl_is_not_part_of_the_experiment_on_resume():
    from mgvsr.config import Config, to_dict
    from mgvsr.train import experiment_changes

    old, new = to_dict(Config()), to_dict(Config())
    del old["optim"]["adam_impl"]  # a checkpoint written before the switch existed
    new["optim"]["adam_impl"] = "plain"
    assert experiment_changes(old, new) == []


def test_amp_auto_is_bf16_only_where_bf16_is_native(monkeypatch):
    import warnings

    import mgvsr.runtime as runtime
    from mgvsr.config import Config
    from mgvsr.train import resolve_device_settings

    cpu = torch.device("cpu")
    cfg = Config()
    cfg.train.amp, cfg.train.channels_last = "auto", "auto"
    for native, expected in ((True, "bf16"), (False, "none")):
        monkeypatch.setattr(runtime, "bf16_is_native", lambda device, native=native: native)
        assert runtime.resolve_amp("auto", cpu) == expected
        assert runtime.resolve_amp("fp16", cpu) == "fp16"  # explicit choices are kept
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # auto never warns
            resolved = resolve_device_settings(cfg, cpu)
        assert resolved.train.amp == expected and resolved.train.channels_last is False
        assert cfg.train.amp == "auto"  # the given config is left as it was
        assert InferenceOptions(amp="auto").on_device(cpu).amp == expected
    assert resolve_device_settings(cfg, torch.device("cuda")).train.channels_last is True


def test_explicit_bf16_on_an_emulating_device_warns_once_and_runs_on(monkeypatch):
    import warnings

    import mgvsr.runtime as runtime
    from mgvsr.config import Config
    from mgvsr.train import resolve_device_settings

    cpu = torch.device("cpu")
    cfg = Config()
    cfg.train.amp = "bf16"
    monkeypatch.setattr(runtime, "bf16_is_native", lambda device: False)
    with pytest.warns(RuntimeWarning, match=r"train.amp: bf16 .* emulated: measured about 40x slower") as record:
        assert resolve_device_settings(cfg, cpu).train.amp == "bf16"
    assert len(record) == 1
    with pytest.warns(RuntimeWarning, match=r"--amp: bf16 .* emulated"):
        assert InferenceOptions(amp="bf16").on_device(cpu).amp == "bf16"
    monkeypatch.setattr(runtime, "bf16_is_native", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_device_settings(cfg, cpu)
        resolve_device_settings(cfg, cpu, warn=False)


def test_channels_last_config_accepts_auto_and_booleans_only(tmp_path):
    from mgvsr.config import ConfigError, from_dict

    assert from_dict({"train": {"channels_last": "auto"}}).train.channels_last == "auto"
    assert from_dict({"train": {"channels_last": True}}).train.channels_last is True
    with pytest.raises(ConfigError, match="train.channels_last"):
        from_dict({"train": {"channels_last": "yes"}})
    with pytest.raises(ConfigError, match="train.amp"):
        from_dict({"train": {"amp": "fp8"}})


def test_compile_flag_compiles_the_stepping_module(tmp_path, frames_root, monkeypatch):
    import mgvsr.train as train_mod

    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(train_mod.torch, "compile", fake_compile)
    summary = train_mod.train(load_config(_config(tmp_path, frames_root, "basicvsr", compile=True, amp="none",
                                                  channels_last=False), ["schedule.total_iters=2"]))
    assert summary["steps"] == 2
    assert len(compiled) == 2  # frozen flow for step 1, then rebuilt when it unfreezes


def test_step_time_benchmark_times_eager_and_compiled_steps(monkeypatch, capsys):
    """benchmarks/step_time.py at a tiny size: a row per compile setting, the compiled one stepping
    through torch.compile's module (faked here: a real compile takes minutes on a CPU)."""
    bench = load_benchmark("step_time")
    compiled = []

    def fake_compile(module):
        compiled.append(module)
        return module

    monkeypatch.setattr(bench.torch, "compile", fake_compile)
    assert bench.main(["--feat", "4", "--blocks", "1", "--head", "4", "--batch", "1", "--frames", "2",
                       "--patches", "16", "--compile", "off", "on", "--repeat", "2", "--no-tune"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(" none")]
    assert [row[2] for row in rows] == ["off", "on"] and len(compiled) == 1
    assert all(float(x) > 0 for row in rows for x in row[6:9])


# ---- inference -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_runner_channels_last_equals_contiguous(name):
    model = _model(name).eval()
    clip = _smooth_clip(1, 4, 12, 16)[0]
    ref = run_clip(model, clip, InferenceOptions(chunk=3, chunk_overlap=1, tile=10, tile_overlap=2))
    cl = run_clip(channels_last_model(copy.deepcopy(model)), clip,
                  InferenceOptions(chunk=3, chunk_overlap=1, tile=10, tile_overlap=2, channels_last=True))
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)


def test_eval_and_upscale_cli_channels_last_equal_contiguous(tmp_path, frames_root, capsys):
    import json

    from mgvsr.cli import main
    from mgvsr.models.weights import save_safetensors

    weights = tmp_path / "m.safetensors"
    save_safetensors(_model("basicvsr"), weights)
    results = []
    for flag in ([], ["--channels-last"]):
        out = tmp_path / f"res{len(flag)}.json"
        assert main(["eval", "--weights", str(weights), "--data", f"frames:{frames_root}", "--device", "cpu",
                     "--out", str(out), "--no-progress", *flag]) == 0, capsys.readouterr().err
        results.append(json.loads(out.read_text())["results"][0]["channels"]["rgb"]["average"]["psnr"])
        dst = tmp_path / f"up{len(flag)}"
        assert main(["upscale", str(frames_root / "clip0"), str(dst), "--weights", str(weights), "--device", "cpu",
                     "--chunk", "2", "--no-progress", *flag]) == 0, capsys.readouterr().err
    assert results[0] == pytest.approx(results[1], abs=1e-3)
    for a, b in zip(sorted((tmp_path / "up0").glob("*.png")), sorted((tmp_path / "up1").glob("*.png"))):
        diff = np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b), dtype=int))
        assert diff.max() <= 1  # float tolerance can flip a rounding
