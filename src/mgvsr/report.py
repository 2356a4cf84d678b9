"""End-of-run report: validation vs bicubic, PSNR-vs-time plot, side-by-side image.

Scoring goes through the evaluation layer (:mod:`mgvsr.evaluation`), so under a process group
every rank scores its share of the validation clips; only the writing rank draws and saves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mgvsr.config import Config
from mgvsr.data import iter_clips
from mgvsr.data.io import write_png
from mgvsr.evaluation import PROTOCOLS, InferenceOptions, bicubic_upscaler, model_upscaler, score_dataset, score_model
from mgvsr.runtime import model_device
from mgvsr.tracking import plot_psnr_vs_time, read_val_log, write_json


def side_by_side(panels: list[tuple[str, np.ndarray]], out_path: Path) -> Path:
    """Save uint8 HxWx3 panels next to each other with a caption above each."""
    h = max(p.shape[0] for _, p in panels)
    caption = 16
    width = sum(p.shape[1] for _, p in panels) + 4 * (len(panels) - 1)
    canvas = Image.new("RGB", (width, h + caption), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for label, panel in panels:
        canvas.paste(Image.fromarray(panel), (x, caption))
        draw.text((x + 4, 2), label, fill="black")
        x += panel.shape[1] + 4
    write_png(Path(out_path), np.asarray(canvas))
    return Path(out_path)


def final_report(
    model: torch.nn.Module, val_set, cfg: Config, run_dir: Path, ours: dict | None = None, write: bool = True
) -> dict:
    """Score the final model (unless ``ours`` already holds its validation) and bicubic; with
    ``write``, write ``val_metrics.json``, the plot and the side-by-side image and return the
    summary fields (an empty dict without ``write``).

    A collective under a process group: every rank calls it, each scoring its share of the clips;
    pass ``write`` on the rank that writes (rank 0).
    """
    model.eval()
    max_frames = cfg.data.val.max_frames if cfg.data.val is not None else 0
    if ours is None:
        ours = score_model(model, val_set, max_frames, cfg.train.amp, cfg.train.channels_last)
    bicubic_up = bicubic_upscaler(4, model_device(model))  # scored on the model's device too
    bicubic = score_dataset(bicubic_up, val_set, PROTOCOLS["generic"], max_frames, "bicubic").flat_scores()
    if not write:
        return {}
    write_json(run_dir / "val_metrics.json", {"mgvsr": ours, "bicubic": bicubic})

    plot = plot_psnr_vs_time(
        {cfg.train.name: read_val_log(run_dir / "val_log.csv")},
        run_dir / "psnr_vs_time.png",
        references={f"bicubic ({bicubic['average']['psnr_y']:.2f} dB)": bicubic["average"]["psnr_y"]},
    )

    # Side by side on the middle frame of the first validation clip.
    name, lr, hr = next(iter(iter_clips(val_set, max_frames=max_frames)))
    t = len(lr) // 2
    sr = model_upscaler(model, InferenceOptions(amp=cfg.train.amp, channels_last=cfg.train.channels_last))(lr)[t].cpu().numpy()
    bic = bicubic_upscaler(4)(lr[t : t + 1])[0].numpy()
    image = side_by_side([("bicubic", bic), ("mgvsr", sr), ("ground truth", hr[t])], run_dir / "side_by_side.png")

    avg, bic_avg = ours["average"], bicubic["average"]
    return {
        "val_psnr": avg["psnr"], "val_ssim": avg["ssim"], "val_psnr_y": avg["psnr_y"], "val_ssim_y": avg["ssim_y"],
        "bicubic_psnr": bic_avg["psnr"], "bicubic_psnr_y": bic_avg["psnr_y"], "bicubic_ssim_y": bic_avg["ssim_y"],
        "clips_below_bicubic": clips_below(ours, bicubic),
        "plot": str(plot), "side_by_side": f"{image} (clip {name}, frame {t})",
        "summary": str(run_dir / "summary.json"),
    }


def clips_below(ours: dict, reference: dict) -> list[dict]:
    """The validation clips on which ``ours`` scores a lower PSNR-Y than ``reference`` (both as
    :meth:`EvalResult.flat_scores`), as ``{"clip", "psnr_y", "reference_psnr_y"}``, worst first.

    A trained model below bicubic on a whole clip usually means it is broken there, e.g. a recurrent
    model whose state grows over clips longer than it was trained on (benchmarks/recurrence_check.py).
    """
    below = [
        {"clip": clip, "psnr_y": scores["psnr_y"], "reference_psnr_y": reference["clips"][clip]["psnr_y"]}
        for clip, scores in ours["clips"].items()
        if clip in reference["clips"] and scores["psnr_y"] < reference["clips"][clip]["psnr_y"]
    ]
    return sorted(below, key=lambda row: row["psnr_y"] - row["reference_psnr_y"])
