"""Build the bundled demo dataset ``demo_data/`` from Big Buck Bunny.

    python scripts/make_demo_data.py [--video ../shared/data/big_buck_bunny_720p.mp4] [--out demo_data]

Big Buck Bunny, (c) 2008 Blender Foundation, www.bigbuckbunny.org, licensed CC-BY 3.0.

The video is streamed once; candidate clips of ``--clip-len`` frames (every ``--every``-th run) are
downsized to 320x180, clips with a scene cut or little texture are dropped, and the most detailed
clips that lie at least ``--min-gap`` frames apart (before the end credits) (so: different scenes) are kept. In time order,
every third kept clip goes to validation, the rest to training. The result is an ordinary prepared
dataset (``DatasetConfig(kind="prepared", root="demo_data", split="train"|"val")``) with LR made on the
fly (BI, MATLAB bicubic x4) by the loader.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mgvsr.data.prepare import frame_details, iter_chunks, parse_size, sha256_file, write_prepared

CREDIT = "Big Buck Bunny, (c) 2008 Blender Foundation, www.bigbuckbunny.org, CC-BY 3.0"
REPO = Path(__file__).resolve().parents[1]


def mean_detail(frames: np.ndarray) -> float:
    """The ranking the bundled clips were chosen by: the texture score of every 4th frame, averaged.
    ``Chunk.detail`` keeps the flattest frame's score instead (what ``mgvsr prepare --min-detail``
    filters fades with), which would rank the candidates differently."""
    return float(frame_details(frames[::4]).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default=str(REPO.parent / "shared/data/big_buck_bunny_720p.mp4"))
    p.add_argument("--out", default=str(REPO / "demo_data"))
    p.add_argument("--hr-size", default="320x180")
    p.add_argument("--clip-len", type=int, default=30)
    p.add_argument("--every", type=int, default=4, help="consider every k-th run of clip-len frames")
    p.add_argument("--train-clips", type=int, default=8)
    p.add_argument("--val-clips", type=int, default=3)
    p.add_argument("--min-gap", type=int, default=480, help="frames between chosen clips (distinct scenes)")
    p.add_argument("--max-cut-change", type=float, default=12.0)
    p.add_argument("--crf", type=int, default=8)
    p.add_argument("--last-frame", type=int, default=11600, help="ignore later frames (end credits)")
    args = p.parse_args()

    video = Path(args.video)
    chunks = iter_chunks(video, args.clip_len, args.every, parse_size(args.hr_size), scale=4,
                         max_frames=args.last_frame)
    candidates = [c for c in chunks if c.change <= args.max_cut_change]
    for c in candidates:
        c.detail = mean_detail(c.frames)
    wanted = args.train_clips + args.val_clips
    chosen = []
    for c in sorted(candidates, key=lambda c: -c.detail):  # most detailed first, far apart
        if all(abs(c.start - o.start) >= args.min_gap for o in chosen):
            chosen.append(c)
        if len(chosen) == wanted:
            break
    if len(chosen) < wanted:
        raise SystemExit(f"only {len(chosen)} suitable clips found; lower --min-gap or --every")
    chosen.sort(key=lambda c: c.start)
    val = [c for k, c in enumerate(chosen) if k % 3 == 1][: args.val_clips]
    train = [c for c in chosen if c not in val]
    for split, clips in (("train", train), ("val", val)):
        for c in clips:
            c.name = f"bbb_{c.start:05d}"
            print(f"{split}: {c.name} frames {c.start}-{c.start + args.clip_len - 1} "
                  f"detail {c.detail:.1f} max change {c.change:.1f}")
    sources = [{"path": video.name, "sha256": sha256_file(video)}]
    settings = {"clip_len": args.clip_len, "every": args.every, "hr_size": args.hr_size,
                "selection": f"most detailed, >= {args.min_gap} frames apart, max change {args.max_cut_change}",
                "codec": "libx264 yuv444p", "crf": args.crf, "resize": "PIL bicubic (antialiased)",
                "script": "scripts/make_demo_data.py"}
    out = Path(args.out)
    write_prepared(out, train, val, sources, settings, lr="none", codec="libx264", crf=args.crf, scale=4,
                   credit=CREDIT)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
