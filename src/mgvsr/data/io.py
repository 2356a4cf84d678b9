"""Low-level frame I/O: image folders (PIL) and video files (PyAV).

Conventions: a frame is a ``uint8`` numpy array of shape ``(H, W, 3)`` in RGB order; a stack of
frames is ``(T, H, W, 3)``. Every failure raises :class:`DataError` naming the file and the problem.

The one place for each format: :func:`write_png` writes every PNG mgvsr writes (datasets, saved
evaluation frames, ``upscale`` output, report images); :func:`iter_video_frames` is the video
decoder (datasets, ``prepare``, ``upscale``) and :class:`VideoEncoder` the encoder (``prepare``,
test fixtures via :func:`write_video`, ``upscale``).
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from mgvsr.errors import MgvsrError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


class DataError(MgvsrError, ValueError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file."""


def natural_key(name: str) -> list:
    """Sort key that orders ``im2`` before ``im10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: Path, check_numbering: bool = True) -> list[Path]:
    """Image files of ``folder`` in natural order.

    With ``check_numbering``, the trailing numbers of the file names must be consecutive
    (``00000000.png, 00000001.png, ...`` or ``im1.png .. im7.png``); a gap means a missing frame.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()),
        key=lambda p: natural_key(p.name),
    )
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTS)})")
    if check_numbering:
        numbers = []
        for p in files:
            m = re.search(r"(\d+)$", p.stem)
            if m is None:
                numbers = []
                break
            numbers.append(int(m.group(1)))
        for prev, cur, path in zip(numbers, numbers[1:], files[1:]):
            if cur != prev + 1:
                raise DataError(
                    f"{folder}: missing frame(s) between numbers {prev} and {cur} (before {path.name})"
                )
    return files


def image_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image, read from its header only (no decoding)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # PIL raises several types for bad headers
        raise DataError(f"{path}: not a readable image ({err})") from None
    return h, w


def read_image(path: Path) -> np.ndarray:
    """Decode one image to ``uint8 (H, W, 3)`` RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:
        raise DataError(f"{path}: corrupt or truncated image ({err})") from None


def read_images(paths: Sequence[Path]) -> np.ndarray:
    """Decode several same-sized images to ``uint8 (T, H, W, 3)``."""
    frames = [read_image(p) for p in paths]
    first = frames[0].shape
    for p, f in zip(paths, frames):
        if f.shape != first:
            raise DataError(f"{p}: size {f.shape[1]}x{f.shape[0]} differs from {paths[0]} ({first[1]}x{first[0]})")
    return np.stack(frames)


def write_png(path: Path, frame: np.ndarray) -> None:
    """Write a uint8 ``(H, W, 3)`` (or ``(H, W)``) frame as PNG, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(frame)).save(path, compress_level=4)


# --------------------------------------------------------------------------------------------------
# Video files
# --------------------------------------------------------------------------------------------------


def open_video(path: Path):
    import av

    if not Path(path).is_file():
        raise DataError(f"{path}: video file not found")
    try:
        container = av.open(str(path))
    except Exception as err:
        raise DataError(f"{path}: cannot open video ({err})") from None
    if not container.streams.video:
        container.close()
        raise DataError(f"{path}: has no video stream")
    return container


def video_info(path: Path) -> tuple[int, int, int]:
    """``(num_frames, H, W)`` of a video, counting packets (demux only, no decoding)."""
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        h, w = stream.codec_context.height, stream.codec_context.width
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.size > 0:
                    count += 1
        except Exception as err:
            raise DataError(f"{path}: corrupt or truncated video ({err})") from None
    finally:
        container.close()
    if count == 0 or h == 0 or w == 0:
        raise DataError(f"{path}: video has no frames")
    return count, h, w


def iter_video_frames(path: Path, start: int = 0) -> Iterator[np.ndarray]:
    """Decode a video lazily: ``uint8 (H, W, 3)`` RGB frames from frame ``start`` on.

    Decoding errors raise :class:`DataError` naming the file. When the whole stream has been read
    and it gave fewer frames than the container declares, a warning names the file (a truncated
    download or a damaged file often still decodes up to the damage).
    """
    container = open_video(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        declared = int(stream.frames or 0)  # 0 when the container does not say
        frames = container.decode(stream)
        index = 0
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as err:  # PyAV raises several FFmpeg error types
                raise DataError(f"{path}: corrupt or truncated video ({err})") from None
            if index >= start:
                yield frame.to_ndarray(format="rgb24")
            index += 1
        if declared and index < declared:
            warnings.warn(
                f"{path}: decoded {index} frames but the container declares {declared}; "
                "the file may be truncated or damaged",
                stacklevel=2,
            )
    finally:
        container.close()


def read_video(path: Path, start: int = 0, count: Optional[int] = None) -> np.ndarray:
    """Decode frames ``start .. start+count-1`` (all when ``count`` is None) to ``uint8 (T, H, W, 3)``."""
    frames = list(itertools.islice(iter_video_frames(path, start), count))
    if count is not None and len(frames) < count:
        raise DataError(
            f"{path}: truncated video: expected frames {start}..{start + count - 1}, decoded {len(frames)}"
        )
    if not frames:
        raise DataError(f"{path}: video has no frames")
    return np.stack(frames)


def encoder_settings(codec: str, crf: int) -> tuple[str, dict]:
    """``(pix_fmt, options)`` of the dataset clips: ``libx264`` 4:4:4 at ``crf`` (preset slow),
    ``ffv1`` lossless RGB, anything else 4:2:0 with the codec's defaults."""
    if codec == "libx264":
        return "yuv444p", {"crf": str(crf), "preset": "slow"}
    if codec == "ffv1":
        return "bgr0", {}
    return "yuv420p", {}


class VideoEncoder:
    """Encode ``uint8 (H, W, 3)`` RGB frames one at a time into ``path`` at a constant ``fps``.

    The video stream is created at the first frame (its size); :attr:`container` is open for other
    streams (``upscale`` copies the input's audio into it). Call :meth:`close` to flush and finish
    the file; :meth:`abort` closes it without flushing (the caller removes the file).
    """

    def __init__(self, path: Path, fps: Union[int, Fraction] = 24, codec: str = "libx264",
                 pix_fmt: str = "yuv420p", options: Optional[dict] = None):
        import av

        self.path = Path(path)
        self.fps = Fraction(fps)
        self.codec, self.pix_fmt, self.options = codec, pix_fmt, dict(options or {})
        self.stream = None
        self.count = 0
        try:
            self.container = av.open(str(self.path), mode="w")
        except Exception as err:
            raise DataError(f"{self.path}: cannot create the video file ({err})") from None

    def open_stream(self, height: int, width: int) -> None:
        """Create the video stream (done by the first :meth:`write` when not called before)."""
        try:
            self.stream = self.container.add_stream(self.codec, rate=self.fps)
        except Exception as err:
            raise DataError(f"{self.path}: video encoder {self.codec} is not available in this PyAV build ({err})") from None
        self.stream.height, self.stream.width = height, width
        self.stream.pix_fmt = self.pix_fmt
        if self.options:
            self.stream.options = self.options

    def write(self, frame: np.ndarray) -> None:
        import av

        if self.stream is None:
            self.open_stream(*frame.shape[:2])
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf.pts = self.count
        vf.time_base = 1 / self.fps
        for packet in self.stream.encode(vf):
            self.container.mux(packet)
        self.count += 1

    def flush(self) -> None:
        """Write the frames the encoder still buffers (before other streams are finished)."""
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)

    def close(self) -> None:
        self.flush()
        self.container.close()

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass


def write_video(path: Path, frames: Iterable[np.ndarray], fps: int = 24, codec: str = "libx264", crf: int = 10) -> None:
    """Encode ``uint8 (H, W, 3)`` frames. ``libx264`` uses 4:4:4 chroma and the given CRF; ``ffv1`` is lossless."""
    pix_fmt, options = encoder_settings(codec, crf)
    encoder = VideoEncoder(path, fps, codec, pix_fmt, options)
    try:
        for frame in frames:
            encoder.write(frame)
    except BaseException:
        encoder.abort()
        raise
    encoder.close()


def read_json_file(path: Path, missing_hint: str) -> dict:
    """Parse a JSON index file; a missing or malformed file raises DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: {missing_hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
