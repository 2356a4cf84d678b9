"""Chunked / tiled inference (mgvsr.evaluation.runner) and ``mgvsr upscale`` on a real short clip."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import needs_shared_data, shared_data
from mgvsr.evaluation.runner import InferenceOptions, frames_to_tensor, plan_spans, run_clip, stream_frames
from mgvsr.metrics import tensor_to_uint8
from mgvsr.upscale import UpscaleError, upscale

# Big Buck Bunny, (c) Blender Foundation, CC-BY 3.0; found in ../shared/data relative to the checkout.
BBB = shared_data("big_buck_bunny_720p.mp4")


class PerFrameSR(nn.Module):
    """Stand-in x4 model with no temporal mixing: nearest up-sampling + a 3x3 conv (1 LR px of context)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c, h, w = x.shape
        y = self.conv(F.interpolate(x.reshape(b * t, c, h, w), scale_factor=4, mode="nearest"))
        return y.reshape(b, t, c, 4 * h, 4 * w)


class FailingSR(PerFrameSR):
    """Raises on its second call, i.e. in the middle of a video."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return super().forward(x)


def tiny_basicvsr():
    from mgvsr.config import ModelConfig
    from mgvsr.models import build_model

    return build_model(ModelConfig(num_feat=4, num_block=1)).eval()


# --------------------------------------------------------------------------------------------------
# Plans and exactness
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length,size,overlap", [(10, 3, 0), (10, 3, 2), (7, 1, 0), (5, 5, 1), (5, 9, 2), (11, 4, 3)])
def test_plan_spans_partition_and_context(length, size, overlap):
    spans = plan_spans(length, size, overlap, min_read=2)
    kept = [i for s in spans for i in range(s.keep_start, s.keep_end)]
    assert kept == list(range(length))  # every item kept exactly once, in order
    for s in spans:
        assert 0 <= s.read_start <= s.keep_start < s.keep_end <= s.read_end <= length
        assert s.read_end - s.read_start >= 2
        if size < length:
            assert s.keep_start - s.read_start >= min(overlap, s.keep_start)
            assert s.read_end - s.keep_end >= min(overlap, length - s.keep_end)


def test_per_frame_model_chunks_and_tiles_are_exact():
    model = PerFrameSR()
    clip = torch.rand(7, 3, 10, 13)
    whole = run_clip(model, clip)
    assert whole.shape == (7, 3, 40, 52)
    for chunk, overlap in [(1, 0), (2, 1), (3, 0), (6, 2), (7, 0), (20, 3)]:
        got = run_clip(model, clip, InferenceOptions(chunk=chunk, chunk_overlap=overlap, tile=4, tile_overlap=1))
        torch.testing.assert_close(got, whole, rtol=0, atol=1e-6)
    # Without spatial overlap the tile borders lose their context: not exact any more.
    no_overlap = run_clip(model, clip, InferenceOptions(tile=4, tile_overlap=0))
    assert (no_overlap - whole).abs().max() > 1e-4


def test_stream_frames_equals_run_clip():
    model = PerFrameSR()
    frames = np.random.default_rng(0).integers(0, 256, (9, 6, 5, 3), dtype=np.uint8)
    for opts in [InferenceOptions(), InferenceOptions(chunk=2, chunk_overlap=1), InferenceOptions(chunk=1, chunk_overlap=0)]:
        streamed = np.stack(list(stream_frames(model, iter(list(frames)), opts)))
        expected = tensor_to_uint8(run_clip(model, frames_to_tensor(frames), opts))
        np.testing.assert_array_equal(streamed, expected)


def test_recurrent_model_chunking_error_is_bounded_and_shrinks_with_overlap():
    model = tiny_basicvsr()
    base = torch.rand(3, 12, 12)
    clip = torch.stack([base[:, t // 2 : t // 2 + 8, t // 3 : t // 3 + 8] for t in range(6)])  # moving content
    whole = run_clip(model, clip)
    errors = {}
    for overlap in (0, 1):
        got = run_clip(model, clip, InferenceOptions(chunk=3, chunk_overlap=overlap))
        errors[overlap] = (got - whole).abs().max().item()
    assert 0 < errors[0] < 0.05
    assert errors[1] < errors[0]
    # Context covering the whole clip reproduces the whole-clip output exactly.
    full_context = run_clip(model, clip, InferenceOptions(chunk=3, chunk_overlap=6))
    torch.testing.assert_close(full_context, whole, rtol=0, atol=1e-6)


def test_bf16_autocast_runs_and_stays_close():
    model = PerFrameSR()
    clip = torch.rand(2, 3, 6, 6)
    got = run_clip(model, clip, InferenceOptions(amp="bf16"))
    assert got.dtype == torch.float32
    assert (got - run_clip(model, clip)).abs().max() < 0.05


# --------------------------------------------------------------------------------------------------
# Upscaling a real clip
# --------------------------------------------------------------------------------------------------


def make_clip(path: Path, n: int = 12, size=(64, 36), audio: str | None = "aac") -> None:
    """``n`` frames of Big Buck Bunny from frame 600, resized to ``size``, 24 fps, optional sine audio."""
    import av

    frames = []
    with av.open(str(BBB)) as src:
        for i, frame in enumerate(src.decode(video=0)):
            if i >= 600:
                frames.append(np.asarray(frame.to_image().resize(size, Image.BICUBIC)))
            if len(frames) == n:
                break
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        sound = out.add_stream(audio, rate=44100) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for i, rgb in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 24)
            for packet in video.encode(vf):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        if sound is not None:
            t = np.arange(int(44100 * n / 24)) / 44100
            wave = 0.3 * np.sin(2 * np.pi * 440 * t)
            fmt = "fltp" if audio == "aac" else "s16"
            data = wave.astype(np.float32)[None] if fmt == "fltp" else (wave * 32767).astype(np.int16)[None]
            af = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
            af.sample_rate, af.pts = 44100, 0
            for packet in sound.encode(af):
                out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)


def probe(path: Path) -> dict:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"fps": v.average_rate, "size": (v.width, v.height), "codec": v.codec_context.name,
                "pix_fmt": v.codec_context.pix_fmt, "audio": [a.codec_context.name for a in c.streams.audio]}
        info["frames"] = sum(1 for _ in c.decode(v))
    return info


needs_bbb = needs_shared_data("big_buck_bunny_720p.mp4")


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "bbb.mp4"
    make_clip(path)
    return path


@needs_bbb
def test_cli_upscale_real_clip_with_tiny_basicvsr(clip_mp4, tmp_path, capsys):
    from mgvsr.cli import main
    from mgvsr.export import export_weights
    from mgvsr.models.weights import export_basicsr

    export_basicsr(tiny_basicvsr(), tmp_path / "tiny.pth")
    export_weights(tmp_path / "tiny.pth", tmp_path / "tiny.safetensors", "safetensors")
    out = tmp_path / "out" / "sr.mp4"
    rc = main(["upscale", str(clip_mp4), str(out), "--weights", str(tmp_path / "tiny.safetensors"),
               "--chunk", "5", "--device", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    info = probe(out)
    assert info["frames"] == 12 and info["size"] == (256, 144) and info["fps"] == 24
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["audio"] == ["aac"]  # copied
    assert "audio copied" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["sr.mp4"]  # no temp file left


@needs_bbb
def test_upscale_transcodes_audio_the_container_cannot_hold(tmp_path):
    src = tmp_path / "ulaw.mov"
    make_clip(src, n=6, audio="pcm_mulaw")  # mp4 cannot hold mu-law audio
    report = upscale(src, tmp_path / "sr.mp4", PerFrameSR(), InferenceOptions(chunk=4), crf=23, progress=False)
    assert report.audio == "aac" and report.frames == 6
    info = probe(tmp_path / "sr.mp4")
    assert info["audio"] == ["aac"] and info["frames"] == 6


@needs_bbb
def test_upscale_video_to_png_folder_matches_model(clip_mp4, tmp_path):
    import av

    model = PerFrameSR()
    out = tmp_path / "frames"
    report = upscale(clip_mp4, out, model, InferenceOptions(chunk=5, chunk_overlap=1), progress=False)
    assert report.frames == 12
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "00000000.png" and len(names) == 12
    with av.open(str(clip_mp4)) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24")
    expected = tensor_to_uint8(run_clip(model, frames_to_tensor(first[None])))[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "00000000.png")), expected)


def test_upscale_frame_folder_to_video_with_given_fps(tmp_path):
    pytest.importorskip("av")
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).save(folder / f"f{i}.png")
    report = upscale(folder, tmp_path / "o.mkv", PerFrameSR(), fps=Fraction(30000, 1001), progress=False)
    info = probe(tmp_path / "o.mkv")
    assert report.frames == 5 and info["frames"] == 5
    assert info["size"] == (44, 36)  # 4 x (11, 9): even already
    assert info["fps"] == Fraction(30000, 1001) and info["audio"] == []


# --------------------------------------------------------------------------------------------------
# Errors: clear messages, never a partial file under the final name
# --------------------------------------------------------------------------------------------------


def test_unreadable_inputs(tmp_path):
    with pytest.raises(UpscaleError, match="missing.mp4: input not found"):
        upscale(tmp_path / "missing.mp4", tmp_path / "o.mp4", PerFrameSR(), progress=False)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    with pytest.raises(UpscaleError, match="bad.mp4: cannot open as a video"):
        upscale(bad, tmp_path / "o.mp4", PerFrameSR(), progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UpscaleError, match="no image frames"):
        upscale(tmp_path / "empty", tmp_path / "o.mp4", PerFrameSR(), progress=False)
    assert not (tmp_path / "o.mp4").exists()


def test_unwritable_outputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "0.png")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UpscaleError, match="afile is not a folder"):
        upscale(folder, tmp_path / "afile" / "o.mp4", PerFrameSR(), progress=False)
    (tmp_path / "exists.mp4").write_text("keep me")
    with pytest.raises(UpscaleError, match="already exists"):
        upscale(folder, tmp_path / "exists.mp4", PerFrameSR(), progress=False)
    assert (tmp_path / "exists.mp4").read_text() == "keep me"
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(UpscaleError, match="not writable"):
                upscale(folder, ro / "o.mp4", PerFrameSR(), progress=False)
        finally:
            ro.chmod(0o755)


@pytest.mark.parametrize("name", ["o.mp4", "frames"])
def test_failure_midway_leaves_no_partial_output(tmp_path, name):
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((4, 4, 3), 20 * i, np.uint8)).save(folder / f"{i}.png")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        upscale(folder, out_dir / name, FailingSR(), InferenceOptions(chunk=2), progress=False)
    assert list(out_dir.iterdir()) == []  # neither the final name nor a temp file


def test_cli_upscale_reports_errors(tmp_path, capsys):
    from mgvsr.cli import main

    rc = main(["upscale", str(tmp_path / "nope.mp4"), str(tmp_path / "o.mp4"), "--weights", "w.safetensors"])
    assert rc == 2
    assert "nope.mp4: input not found" in capsys.readouterr().err
