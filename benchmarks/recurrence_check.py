"""Is a trained BasicVSR / IconVSR stable over clips longer than it was trained on?

    python benchmarks/recurrence_check.py RUN_DIR [--weights FILE] [--loop K] [--json OUT.json]

Runs the model of a training run (``RUN_DIR/weights/model_ema.safetensors`` when the run kept an
EMA, as the run's own report does, else ``model.safetensors``; and the validation set of
``RUN_DIR/config.yaml``) over each whole validation clip and prints, frame by frame, PSNR-Y (uint8
output, as ``mgvsr eval``) and the largest absolute feature value that each propagation branch
carries (the output of ``backward_trunk`` / ``forward_trunk`` at that frame). A recurrence that
amplifies its state grows these values geometrically with the number of propagation steps, and the
frames reached last (the first frames of a clip for the backward branch) lose quality. A clip is
flagged when a branch's largest feature grows more than 10x between the training clip length and
the end of the clip. ``--loop K`` makes each clip K times longer (played forwards, backwards,
forwards, ...: no jump between frames) to look past the length of the validation clips. Found with
the demo recipe (docs/benchmarks.md, section 8, "Third round").
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from mgvsr.config import load_config
from mgvsr.data.build import build_source
from mgvsr.errors import MgvsrError
from mgvsr.evaluation.device_metrics import psnr
from mgvsr.evaluation.runner import frames_to_tensor, quantize
from mgvsr.models.loading import build_for_inference

GROWTH_LIMIT = 10.0


def check_clip(model: torch.nn.Module, lr, hr, trained_len: int) -> dict:
    """Per-frame PSNR-Y and per-step feature maxima of one clip (uint8 ``(T, h, w, 3)`` arrays)."""
    peaks: dict[str, list[float]] = {"backward": [], "forward": []}
    hooks = [
        getattr(model, f"{branch}_trunk").register_forward_hook(
            lambda _m, _i, out, branch=branch: peaks[branch].append(out.detach().abs().max().item())
        )
        for branch in peaks
    ]
    try:
        with torch.no_grad():
            out = quantize(model(frames_to_tensor(lr).unsqueeze(0))[0])
    finally:
        for hook in hooks:
            hook.remove()
    gt = torch.from_numpy(hr)
    frame_psnr = [psnr(out[t], gt[t], y_channel=True).item() for t in range(len(gt))]
    # peaks[branch][k] is the state after k + 1 propagation steps (the backward branch starts at the
    # last frame); growth = state after the whole clip / state after the training clip length.
    step = min(trained_len, len(gt)) - 1
    growth = {b: v[-1] / max(v[step], 1e-12) for b, v in peaks.items()}
    return {
        "psnr_y": frame_psnr,
        "max_feature_by_step": peaks,
        "growth": growth,
        "unstable": any(g > GROWTH_LIMIT for g in growth.values()),
    }


def looped(frames: np.ndarray, k: int) -> np.ndarray:
    """``frames`` played ``k`` times, every other time backwards (the turning frame not repeated)."""
    parts = [frames]
    for i in range(1, k):
        parts.append((frames[::-1] if i % 2 else frames)[1:])
    return np.concatenate(parts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--weights", type=Path, help="default: the run's EMA weights if any, else its raw weights")
    parser.add_argument("--loop", type=int, default=1, help="play each clip K times, alternating direction")
    parser.add_argument("--json", type=Path, help="also write the per-frame numbers here")
    args = parser.parse_args(argv)
    if args.loop < 1:
        parser.error(f"--loop must be >= 1, got {args.loop}")

    weights = args.weights or next(
        (w for w in (args.run_dir / "weights" / name for name in ("model_ema.safetensors", "model.safetensors"))
         if w.is_file()), args.run_dir / "weights" / "model.safetensors")
    try:
        cfg = load_config(args.run_dir / "config.yaml")
        model, model_cfg = build_for_inference(weights)
        if cfg.data.val is None:
            raise MgvsrError(f"{args.run_dir / 'config.yaml'}: data.val is not set; the check runs the "
                             "validation clips, so give the run a validation set")
        source = build_source(cfg.data.val, model_cfg.scale)
    except MgvsrError as err:  # names the file or setting
        print(f"recurrence_check: error: {err}", file=sys.stderr)
        return 2
    if not hasattr(model, "backward_trunk"):
        print(f"recurrence_check: {model_cfg.name} has no propagation branches to check", file=sys.stderr)
        return 2
    trained_len = cfg.schedule.num_frames
    print(f"python benchmarks/recurrence_check.py {shlex.join(argv)}")
    print(f"trained on clips of up to {trained_len} frames; growth = largest feature after the whole clip / "
          f"after {trained_len} steps")
    results = {}
    for i, clip in enumerate(source.clips):
        lr, hr = (looped(frames, args.loop) for frames in source.read_clip(i, list(range(clip.num_frames))))
        res = results[clip.name] = check_clip(model, lr, hr, trained_len)
        p = res["psnr_y"]
        worst = min(range(len(p)), key=p.__getitem__)
        print(f"{clip.name} ({len(p)} frames): PSNR-Y mean {sum(p) / len(p):.2f} dB, worst {p[worst]:.2f} dB "
              f"(frame {worst}); growth backward {res['growth']['backward']:.3g}x, forward "
              f"{res['growth']['forward']:.3g}x{'  UNSTABLE' if res['unstable'] else ''}")
        print("  PSNR-Y by frame: " + " ".join(f"{v:.1f}" for v in p))
    if args.json:
        args.json.write_text(json.dumps({"run_dir": str(args.run_dir), "trained_len": trained_len, "loop": args.loop,
                                         "clips": results}, indent=1))
    return 1 if any(r["unstable"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
