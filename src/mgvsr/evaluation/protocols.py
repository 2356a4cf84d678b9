"""What is scored, and by which up-sampler: protocols and upscalers.

A *protocol* fixes what is measured; see docs/evaluation.md for the sources of each:

=========  ==========================  ===========  =======  =====================================
protocol   frames scored               channels     border   notes
=========  ==========================  ===========  =======  =====================================
reds4      all frames of each clip     RGB          0        REDS4 = clips 000, 011, 015, 020
vid4       all frames of each clip     Y            0        Y = BT.601 luma (MATLAB rgb2ycbcr)
vimeo-t    centre frame (im4) of 7     Y            0        model sees all 7 frames; by default
                                                             the output is averaged with that of
                                                             the time-reversed clip (flip_seq)
generic    all frames of each clip     RGB and Y    0        any frame folder / video set; also
                                                             training validation and its report
=========  ==========================  ===========  =======  =====================================

An *upscaler* maps a uint8 LR clip ``(T, h, w, 3)`` (numpy, as the datasets give it) to the uint8
SR clip ``(T, H, W, 3)`` as a torch tensor on the device where it will be scored: a model
(:func:`model_upscaler`, on the model's device, so its output never leaves the accelerator) or the
papers' bicubic baseline (:func:`bicubic_upscaler`). Both are scored by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from mgvsr.evaluation.runner import InferenceOptions, frames_to_tensor, quantize, run_clip
from mgvsr.runtime import model_device

Upscaler = Callable[[np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class Protocol:
    """What to score. ``channels``: "rgb" and/or "y"; the first one is the headline number."""

    name: str
    channels: tuple[str, ...]
    crop_border: int = 0
    center_frame: bool = False  # score only frame T // 2 of each clip (Vimeo-90K-T: im4 of 7)
    flip_seq: bool = False  # average with the output for the time-reversed clip (BasicSR flip_seq)

    def scored_frames(self, num_lr: int, num_gt: int) -> list[tuple[int, int]]:
        """``(output index, ground-truth index)`` pairs this protocol scores for a clip of ``num_lr``
        input frames with ``num_gt`` ground-truth frames (a single GT frame = the centre frame's).

        Raises ValueError when the ground truth does not cover the scored frames.
        """
        if self.center_frame:
            t = num_lr // 2
            return [(t, t if num_gt == num_lr else 0)]
        if num_gt != num_lr:
            raise ValueError(f"{num_gt} ground-truth frames for {num_lr} output frames")
        return [(t, t) for t in range(num_lr)]


PROTOCOLS: dict[str, Protocol] = {
    "reds4": Protocol("reds4", ("rgb",)),
    "vid4": Protocol("vid4", ("y",)),
    "vimeo-t": Protocol("vimeo-t", ("y",), center_frame=True, flip_seq=True),
    "generic": Protocol("generic", ("rgb", "y")),
}

# Dataset kind -> default protocol and split.
DEFAULT_PROTOCOL = {"reds": "reds4", "vid4": "vid4", "vimeo": "vimeo-t"}
DEFAULT_SPLIT = {"reds": "REDS4", "vimeo": "test", "prepared": "val"}


def model_upscaler(model: nn.Module, opts: Optional[InferenceOptions] = None, flip_seq: bool = False) -> Upscaler:
    """Wrap a model with :func:`mgvsr.evaluation.runner.run_clip`; the output stays on the model's device.

    With ``flip_seq`` the clip is followed by its time-reversed copy (2T frames), and the output of
    each frame is the mean of its two outputs, as BasicSR's ``VideoRecurrentModel.test`` does.
    """

    def upscale(lr: np.ndarray) -> torch.Tensor:
        clip = frames_to_tensor(lr)
        n = clip.shape[0]
        if flip_seq:
            clip = torch.cat([clip, clip.flip(0)], dim=0)
        out = run_clip(model, clip, opts, out_device=model_device(model))
        if flip_seq:
            out = 0.5 * (out[:n] + out[n:].flip(0))
        return quantize(out)

    return upscale


def bicubic_upscaler(scale: int = 4, device: str | torch.device = "cpu") -> Upscaler:
    """MATLAB-style bicubic up-sampling (``imresize(lr, scale, 'bicubic')``), the papers' baseline;
    the result is put on ``device`` for scoring."""
    from mgvsr.data.degrade import bicubic_resize

    def upscale(lr: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([bicubic_resize(frame, float(scale)) for frame in lr])).to(device)

    return upscale
