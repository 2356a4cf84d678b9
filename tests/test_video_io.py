"""data/io.py's one video decoder and one encoder: round trip, and a short video is reported."""

from __future__ import annotations

import warnings
from fractions import Fraction

import av
import numpy as np
import pytest

import synthetic as syn
from mgvsr.data.io import DataError, VideoEncoder, iter_video_frames, read_video, write_video


def _faststart_mp4(path, frames) -> list[int]:
    """MPEG-4 with the index (frame count) before the data; returns each packet's byte offset."""
    out = av.open(str(path), "w", options={"movflags": "faststart"})
    stream = out.add_stream("mpeg4", rate=24)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    for frame in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    with av.open(str(path)) as container:
        return [p.pos for p in container.demux(container.streams.video[0]) if p.size]


def test_video_with_fewer_frames_than_declared_warns_naming_the_file(tmp_path):
    positions = _faststart_mp4(tmp_path / "full.mp4", syn.smooth_clip(10, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete video decodes without a warning
        assert len(list(iter_video_frames(tmp_path / "full.mp4"))) == 10
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: positions[7]])  # the last 3 frames' data are gone
    with pytest.warns(UserWarning, match=r"cut.mp4: decoded 7 frames but the container declares 10"):
        frames = list(iter_video_frames(tmp_path / "cut.mp4"))
    assert len(frames) == 7
    with pytest.warns(UserWarning, match="cut.mp4"), pytest.raises(DataError, match=r"cut.mp4: truncated video"):
        read_video(tmp_path / "cut.mp4", start=5, count=4)


def test_encoder_round_trip_is_lossless_with_ffv1(tmp_path):
    clip = syn.smooth_clip(5, 24, 40)
    write_video(tmp_path / "a.mkv", clip, codec="ffv1")
    assert np.array_equal(read_video(tmp_path / "a.mkv"), clip)
    assert np.array_equal(np.stack(list(iter_video_frames(tmp_path / "a.mkv", start=3))), clip[3:])
    encoder = VideoEncoder(tmp_path / "b.mkv", Fraction(30000, 1001), "ffv1", "bgr0")
    for frame in clip:
        encoder.write(frame)
    encoder.close()
    assert encoder.count == 5 and np.array_equal(read_video(tmp_path / "b.mkv"), clip)
