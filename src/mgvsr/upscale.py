"""``mgvsr upscale INPUT OUTPUT --weights W``: super-resolve a video file or a folder of frames.

* INPUT: a video file PyAV can decode, or a folder of image frames (sorted by natural name order).
* OUTPUT: a video file when it ends in a video extension (H.264 via ``libx264``, ``yuv420p``, constant
  frame rate equal to the input's average rate, even width/height, CRF ``--crf``), else a folder of
  PNG frames ``00000000.png, 00000001.png, ...``.
* Audio: the input's first audio stream is copied packet by packet when the output container accepts
  its codec, otherwise re-encoded to AAC.
* Streaming: frames are decoded, super-resolved and written in chunks of ``--chunk`` frames (each
  chunk reads ``--chunk-overlap`` context frames on both sides, see :mod:`mgvsr.evaluation.runner`), so a
  long video never has to fit in memory. ``--chunk 0`` reads the whole input first (exact).
* Safety: everything is written under a temporary name in the output's folder and renamed to the
  final name only when complete; on any failure the temporary file/folder is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from torch import nn

from mgvsr.data.io import IMAGE_EXTS, DataError, VideoEncoder, iter_video_frames, natural_key, read_image, write_png
from mgvsr.data.io import VIDEO_EXTS as READABLE_VIDEO_EXTS
from mgvsr.errors import MgvsrError
from mgvsr.evaluation.runner import InferenceOptions, add_model_arguments, stream_frames

# Containers we write H.264 into; other video extensions (e.g. .webm) are refused as output.
VIDEO_EXTS = (".mp4", ".mkv", ".mov", ".avi", ".m4v")
DEFAULT_FOLDER_FPS = Fraction(24)


class UpscaleError(MgvsrError, ValueError):
    """Unreadable input, unusable output or bad options; the message names the path."""


# --------------------------------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------------------------------


@dataclass
class Source:
    """An opened input: frame iterator factory plus what the writer needs to know."""

    path: Path
    is_video: bool
    fps: Fraction
    num_frames: Optional[int]  # None when the container does not say
    audio: bool  # has an audio stream (video inputs only)
    files: Optional[list[Path]] = None  # frame-folder inputs

    def frames(self) -> Iterator[np.ndarray]:
        """uint8 RGB (h, w, 3) frames, decoded lazily."""
        return _video_frames(self.path) if self.is_video else _folder_frames(self.files or [])


def open_source(path: str | Path, fps: Optional[Fraction] = None) -> Source:
    """Probe ``path`` (video file or frame folder); raise :class:`UpscaleError` if unreadable."""
    path = Path(path)
    if not path.exists():
        raise UpscaleError(f"{path}: input not found")
    if path.is_dir():
        files = sorted(
            (p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS), key=lambda p: natural_key(p.name)
        )
        if not files:
            raise UpscaleError(f"{path}: folder has no image frames ({', '.join(IMAGE_EXTS)})")
        return Source(path, False, fps or DEFAULT_FOLDER_FPS, len(files), False, files)
    import av

    try:
        container = av.open(str(path))
    except Exception as err:
        raise UpscaleError(f"{path}: cannot open as a video ({err})") from None
    try:
        if not container.streams.video:
            raise UpscaleError(f"{path}: has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None or not stream.codec_context.name:
            raise UpscaleError(f"{path}: video codec is not supported by this PyAV/FFmpeg build")
        rate = stream.average_rate or stream.guessed_rate
        if fps is None and not rate:
            raise UpscaleError(f"{path}: the frame rate is unknown; pass --fps")
        count = int(stream.frames) if stream.frames else None
        return Source(path, True, Fraction(fps or rate), count, bool(container.streams.audio))
    finally:
        container.close()


def _video_frames(path: Path) -> Iterator[np.ndarray]:
    """The input video's frames (:func:`mgvsr.data.io.iter_video_frames`), errors as UpscaleError."""
    try:
        yield from iter_video_frames(path)
    except DataError as err:
        raise UpscaleError(str(err)) from None


def _folder_frames(files: list[Path]) -> Iterator[np.ndarray]:
    size = None
    for path in files:
        try:
            frame = read_image(path)
        except DataError as err:
            raise UpscaleError(str(err)) from None
        if size is None:
            size = frame.shape
        elif frame.shape != size:
            raise UpscaleError(f"{path}: frame size {frame.shape[1]}x{frame.shape[0]} differs from the first frame's {size[1]}x{size[0]}")
        yield frame


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def is_video_path(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def _temp_name(final: Path) -> Path:
    """A hidden sibling of ``final`` that keeps its extension (so the container format is the same)."""
    return final.parent / f".{final.stem}.partial-{os.getpid()}{final.suffix}"


class FolderWriter:
    """PNG frames into a temporary folder, renamed to the final folder by :meth:`commit`."""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = _temp_name(final)
        self.tmp.mkdir()
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        write_png(self.tmp / f"{self.count:08d}.png", frame)
        self.count += 1

    def commit(self) -> None:
        os.replace(self.tmp, self.final)  # an existing *empty* folder is replaced

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class VideoWriter:
    """H.264 / yuv420p video (:class:`mgvsr.data.io.VideoEncoder`) with the input's audio (copied,
    or re-encoded to AAC), written under a temporary name and renamed by :meth:`commit`."""

    def __init__(self, final: Path, fps: Fraction, crf: int, audio_from: Optional[Path]):
        import av

        self.final = final
        self.tmp = _temp_name(final)
        self.fps = fps
        self.audio = None
        try:
            self.encoder = VideoEncoder(self.tmp, fps, "libx264", "yuv420p", {"crf": str(crf)})
        except DataError as err:
            raise UpscaleError(f"{final}: cannot create the output video ({err})") from None
        self.audio_from = audio_from
        if audio_from is not None:  # probe now so that `audio_mode` is known before the first frame
            with av.open(str(audio_from)) as probe:
                codec = probe.streams.audio[0].codec_context.name
            supported = getattr(self.encoder.container, "supported_codecs", set())
            self.audio_mode = "copied" if codec in supported else "aac"
        else:
            self.audio_mode = "none"

    @property
    def count(self) -> int:
        return self.encoder.count

    def _open_video(self, h: int, w: int) -> None:
        try:
            self.encoder.open_stream(h, w)
        except DataError as err:
            raise UpscaleError(f"{self.final}: H.264 encoder libx264 is not available ({err})") from None
        if self.audio_from is not None:  # after the video stream, so that video is stream 0
            self.audio = _AudioCopier(self.encoder.container, self.audio_from)

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        frame = frame[: h - h % 2, : w - w % 2]  # yuv420p needs even dimensions
        if self.encoder.stream is None:
            self._open_video(*frame.shape[:2])
        self.encoder.write(frame)
        if self.audio is not None:
            self.audio.copy_until(self.count / self.fps)

    def commit(self) -> None:
        if self.encoder.stream is None:
            raise UpscaleError(f"{self.final}: no frames were written")
        self.encoder.flush()
        if self.audio is not None:
            self.audio.copy_until(None)
        self.encoder.container.close()
        os.replace(self.tmp, self.final)

    def abort(self) -> None:
        self.encoder.abort()
        if self.audio is not None:
            self.audio.close()
        if self.tmp.exists():
            self.tmp.unlink()


class _AudioCopier:
    """Feeds the input's first audio stream into the output, interleaved with the video by time."""

    def __init__(self, out, source: Path):
        import av

        self.src = av.open(str(source))
        self.in_stream = self.src.streams.audio[0]
        codec = self.in_stream.codec_context.name
        self.remux = codec in getattr(out, "supported_codecs", set())
        if self.remux:
            self.out_stream = out.add_stream_from_template(self.in_stream)
        else:
            self.out_stream = out.add_stream("aac", rate=self.in_stream.codec_context.sample_rate)
            self.resampler = av.AudioResampler(format="fltp", layout=self.in_stream.codec_context.layout,
                                               rate=self.in_stream.codec_context.sample_rate)
        self.out = out
        self.packets = self.src.demux(self.in_stream)
        self.done = False

    def copy_until(self, seconds: Optional[float]) -> None:
        """Copy audio up to ``seconds`` of stream time (everything left when None)."""
        while not self.done:
            try:
                packet = next(self.packets)
            except StopIteration:
                self.done = True
                break
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            self._write(packet)
            if seconds is not None and packet.pts is not None and float(packet.pts * packet.time_base) >= seconds:
                break
        if seconds is None:
            if not self.remux:
                for out_packet in self.out_stream.encode(None):
                    self.out.mux(out_packet)
            self.close()

    def _write(self, packet) -> None:
        if self.remux:
            packet.stream = self.out_stream
            self.out.mux(packet)
            return
        for frame in packet.decode():
            for resampled in self.resampler.resample(frame):
                resampled.pts = None
                for out_packet in self.out_stream.encode(resampled):
                    self.out.mux(out_packet)

    def close(self) -> None:
        self.src.close()


def _check_output(output: Path, overwrite: bool) -> None:
    parent = output.parent
    if parent.exists() and not parent.is_dir():
        raise UpscaleError(f"{output}: {parent} is not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UpscaleError(f"{output}: cannot create the output folder {parent} ({err.strerror})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UpscaleError(f"{output}: output folder {parent} is not writable")
    if output.suffix.lower() in READABLE_VIDEO_EXTS and not is_video_path(output):
        raise UpscaleError(f"{output}: cannot write H.264 into a {output.suffix} file; use one of {', '.join(VIDEO_EXTS)}")
    if is_video_path(output):
        if output.is_dir():
            raise UpscaleError(f"{output}: is a folder, expected a video file name")
        if output.exists() and not overwrite:
            raise UpscaleError(f"{output}: already exists (use --overwrite)")
    elif output.exists():
        if not output.is_dir():
            raise UpscaleError(f"{output}: exists and is not a folder (a video needs one of {', '.join(VIDEO_EXTS)})")
        if any(output.iterdir()):
            raise UpscaleError(f"{output}: folder exists and is not empty")


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


@dataclass
class UpscaleReport:
    frames: int
    seconds: float
    fps: Fraction
    output: Path
    audio: str  # "none" | "copied" | "aac"


def upscale(
    input_path: str | Path,
    output_path: str | Path,
    model: nn.Module,
    opts: Optional[InferenceOptions] = None,
    crf: int = 18,
    fps: Optional[Fraction] = None,
    overwrite: bool = False,
    progress: bool = True,
) -> UpscaleReport:
    """Super-resolve ``input_path`` into ``output_path`` with ``model`` (see the module docstring)."""
    opts = opts or InferenceOptions(chunk=30, chunk_overlap=2)
    opts.check()
    if not 0 <= crf <= 51:
        raise UpscaleError(f"--crf: must be in 0..51 (x264), got {crf}")
    src = open_source(input_path, fps)
    output = Path(output_path)
    _check_output(output, overwrite)
    if is_video_path(output):
        writer = VideoWriter(output, src.fps, crf, src.path if src.audio else None)
        audio = writer.audio_mode
    else:
        writer, audio = FolderWriter(output), "none"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=src.num_frames, unit="frame", desc=f"upscale {src.path.name}", file=sys.stderr)
    start = time.perf_counter()
    try:
        for frame in stream_frames(model, src.frames(), opts):
            writer.write(frame)
            if bar is not None:
                bar.update(1)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    return UpscaleReport(writer.count, time.perf_counter() - start, src.fps, output, audio)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="video file or folder of frames")
    parser.add_argument("output", help=f"video file ({', '.join(VIDEO_EXTS)}) or folder for PNG frames")
    parser.add_argument("--weights", required=True, help="model weights (.safetensors, checkpoint or BasicSR .pth)")
    parser.add_argument("--chunk", type=int, default=30, help="frames kept per chunk (0 = whole input at once)")
    parser.add_argument("--chunk-overlap", type=int, default=2, help="context frames on each side of a chunk")
    parser.add_argument("--tile", type=int, default=0, help="LR tile size in pixels (0 = whole frame)")
    parser.add_argument("--tile-overlap", type=int, default=16, help="LR context pixels on each side of a tile")
    parser.add_argument("--crf", type=int, default=18, help="x264 constant rate factor (0 = lossless, 18 ~ visually lossless)")
    parser.add_argument("--fps", type=Fraction, help="frame rate for frame-folder inputs (default 24)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output video")
    add_model_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mgvsr.models.loading import build_for_inference
    from mgvsr.runtime import channels_last_model, resolve_device

    opts = InferenceOptions(args.chunk, args.chunk_overlap, args.tile, args.tile_overlap, args.amp, args.channels_last)
    opts.check()
    # Probe input and output before the (slow) model build, so mistakes fail fast.
    open_source(args.input, args.fps)
    _check_output(Path(args.output), args.overwrite)
    device = resolve_device(args.device)
    opts = opts.on_device(device)
    model, cfg = build_for_inference(args.weights, device, args.model, args.num_feat, args.num_block)
    if opts.channels_last:
        channels_last_model(model)
    report = upscale(args.input, args.output, model, opts, args.crf, args.fps, args.overwrite, not args.no_progress)
    rate = report.frames / report.seconds if report.seconds > 0 else float("nan")
    print(
        f"wrote {report.output}: {report.frames} frames at {float(report.fps):g} fps, audio {report.audio} "
        f"({cfg.name} {cfg.num_feat}/{cfg.num_block}, {rate:.2f} frames/s)"
    )
    return 0
