"""benchmarks/recurrence_check.py: per-frame scores and the growth of the propagated state."""

import numpy as np
import pytest
import torch
from conftest import load_benchmark

from mgvsr.models.basicvsr import BasicVSR

check = load_benchmark("recurrence_check")


def _clip(t: int = 8, h: int = 8, w: int = 8):
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, size=(t, 4 * h, 4 * w, 3), dtype=np.uint8)
    return lr, hr


def _model() -> BasicVSR:
    torch.manual_seed(0)
    return BasicVSR(num_feat=4, num_block=1, head_feat=4).eval()


def test_every_frame_and_step_is_reported():
    lr, hr = _clip()
    res = check.check_clip(_model(), lr, hr, trained_len=3)
    assert len(res["psnr_y"]) == 8 and all(np.isfinite(res["psnr_y"]))
    assert [len(v) for v in res["max_feature_by_step"].values()] == [8, 8]
    peaks = res["max_feature_by_step"]["backward"]
    assert res["growth"]["backward"] == pytest.approx(peaks[-1] / peaks[2])


def test_a_state_that_doubles_every_step_is_flagged(monkeypatch):
    model = _model()
    trunk = model.backward_trunk
    plain = trunk.forward

    def amplifying(x):  # the state doubles at every step (through the concatenated input feature)
        return plain(x) + 2.0 * x[:, 3:]

    monkeypatch.setattr(trunk, "forward", amplifying)
    lr, hr = _clip()
    res = check.check_clip(model, lr, hr, trained_len=3)
    assert res["growth"]["backward"] > check.GROWTH_LIMIT and res["unstable"]
    assert not model.backward_trunk._forward_hooks and not model.forward_trunk._forward_hooks  # removed


def test_looped_clips_turn_without_a_jump():
    frames = np.arange(4)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    order = check.looped(frames, 3)[:, 0, 0, 0].tolist()
    assert order == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert np.array_equal(check.looped(frames, 1), frames)


def test_a_missing_run_folder_is_named(tmp_path, capsys):
    assert check.main([str(tmp_path / "no_run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recurrence_check: error:") and str(tmp_path / "no_run" / "config.yaml") in err
