"""What the user sees of a run: progress bar, CSV and TensorBoard scalars, summary, PSNR-vs-time plot.

Only rank 0 creates a :class:`Tracker` that writes; other ranks get one with ``enabled=False``.
CSV files are appended to, so a resumed run continues the same logs (rows past the resume step that an
interrupted run had already written are dropped at resume time).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

TRAIN_FIELDS = [
    "step", "wall_time", "loss", "lr", "stage", "num_frames", "patch_size", "batch_size",
    "data_wait", "compute", "skipped",
]
VAL_FIELDS = ["step", "wall_time", "psnr", "ssim", "psnr_y", "ssim_y"]


def _truncate_csv(path: Path, fields: list[str], last_step: int) -> None:
    """Keep the header and rows with step <= last_step (drop rows an interrupted run wrote later)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= last_step]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


class Tracker:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool = True,
        progress: bool = True,
    ):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.bar = None
        self.tb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.train_csv = self.run_dir / "train_log.csv"
        self.val_csv = self.run_dir / "val_log.csv"
        _truncate_csv(self.train_csv, TRAIN_FIELDS, start_step)
        _truncate_csv(self.val_csv, VAL_FIELDS, start_step)
        for path, fields in ((self.train_csv, TRAIN_FIELDS), (self.val_csv, VAL_FIELDS)):
            if not path.exists():
                with path.open("w", newline="") as f:
                    csv.DictWriter(f, fieldnames=fields).writeheader()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step or None)
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="it", dynamic_ncols=True)

    def log_train(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.train_csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=TRAIN_FIELDS).writerow({k: row.get(k) for k in TRAIN_FIELDS})
        if self.tb is not None:
            step = row["step"]
            for key in ("loss", "lr", "num_frames", "patch_size", "batch_size", "data_wait", "compute"):
                if row.get(key) is not None:
                    self.tb.add_scalar(f"train/{key}", row[key], step)
            self.tb.add_scalar("train/wall_time", row["wall_time"], step)

    def log_val(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.val_csv.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=VAL_FIELDS).writerow({k: row.get(k) for k in VAL_FIELDS})
        if self.tb is not None:
            for key in ("psnr", "ssim", "psnr_y", "ssim_y"):
                self.tb.add_scalar(f"val/{key}", row[key], row["step"])
            # The same curve against wall-clock seconds (TensorBoard's "relative" axis is per process).
            self.tb.add_scalar("val_vs_time/psnr_y", row["psnr_y"], int(row["wall_time"]))
        self.write(
            f"[val] step {row['step']}: PSNR {row['psnr']:.2f} dB / Y {row['psnr_y']:.2f} dB, "
            f"SSIM-Y {row['ssim_y']:.4f}"
        )

    def update_bar(self, n: int, postfix: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_val_log(path: Path) -> list[dict[str, float]]:
    if not Path(path).exists():
        return []
    with Path(path).open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in (None, "")} for row in csv.DictReader(f)]


def plot_psnr_vs_time(
    curves: dict[str, list[dict[str, float]]],
    out_path: Path,
    key: str = "psnr_y",
    references: dict[str, float] | None = None,
    groups: dict[str, str] | None = None,
) -> Path:
    """Plot validation PSNR against training wall-clock seconds, one line per run (plus optional
    horizontal reference lines, e.g. bicubic upsampling). ``groups`` maps a curve's label to a group
    (e.g. the variant of a seed's run): the curves of a group share a colour and differ in line style
    and marker, so many runs stay readable past matplotlib's ten default colours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    group_of = {label: (groups or {}).get(label, label) for label in curves}
    colour = {group: palette[i % len(palette)] for i, group in enumerate(dict.fromkeys(group_of.values()))}
    seen: dict[str, int] = {}
    for label, rows in curves.items():
        group = group_of[label]
        nth = seen[group] = seen.get(group, -1) + 1
        rows = [r for r in rows if math.isfinite(r.get(key, float("nan")))]
        if rows:
            ax.plot([r["wall_time"] / 60 for r in rows], [r[key] for r in rows], label=label, color=colour[group],
                    linestyle=("-", "--", ":", "-.")[nth % 4], marker="osD^v"[nth % 5], ms=3)
    for label, value in (references or {}).items():
        ax.axhline(value, color="gray", linestyle="--", linewidth=1)
        ax.annotate(label, (0, value), xycoords=("axes fraction", "data"), xytext=(4, 3),
                    textcoords="offset points", color="gray", fontsize=8)
    ax.set_xlabel("training wall-clock time (min)")
    ax.set_ylabel("validation PSNR-Y (dB)" if key == "psnr_y" else f"validation {key}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return Path(out_path)


def write_json(path: Path, data: dict) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False))
    tmp.replace(path)
