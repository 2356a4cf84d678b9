"""BasicSR's LMDB datasets: the same clips and samples as the folders they were packed from, clear
errors for broken LMDBs, and a short training run with validation on LMDB data.

The fixtures pack folders exactly as BasicSR's ``scripts/data_preparation/create_lmdb.py`` does: one
``*.lmdb`` folder per image tree, key = path without ``.png`` (REDS ``000/00000000``, Vimeo-90K
``00001/0001/im1``), value = PNG bytes (compression level 1), ``meta_info.txt`` lines
``<key>.png (H,W,C) 1``.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from mgvsr.config import DatasetConfig
from mgvsr.data import build_dataset, make_batch
from mgvsr.data.io import DataError
from mgvsr.data.sampling import AugmentConfig

REDS_CLIPS = ("000", "001", "011", "012")
VIMEO_SEQS = ("00001/0001", "00001/0002", "00002/0001")
ALL_AUG = AugmentConfig(flip=True, rot=True, reverse=True)


def _frames(seed: int, n: int, h: int, w: int) -> np.ndarray:
    """uint8 (n, h, w, 3): a smooth texture moving one pixel per frame."""
    rng = np.random.default_rng(seed)
    base = np.kron(rng.random((h // 4 + n, w // 4 + n, 3)), np.ones((4, 4, 1)))
    return (np.stack([base[t : t + h, t : t + w] for t in range(n)]) * 255).astype(np.uint8)


def _write_pngs(folder: Path, frames: np.ndarray, name) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, f in enumerate(frames):
        Image.fromarray(f).save(folder / name(t))


def pack_lmdb(folder: Path, lmdb_path: Path, rel_paths: list[str]) -> Path:
    """Pack ``folder/<rel>.png`` into ``lmdb_path`` the way BasicSR's make_lmdb_from_imgs does."""
    env = lmdb.open(str(lmdb_path), map_size=1 << 26)
    lines = []
    with env.begin(write=True) as txn:
        for rel in rel_paths:
            img = np.asarray(Image.open(folder / rel))
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", compress_level=1)
            key = rel[: -len(".png")]
            txn.put(key.encode("ascii"), buf.getvalue())
            h, w, c = img.shape
            lines.append(f"{key}.png ({h},{w},{c}) 1\n")
    env.close()
    (lmdb_path / "meta_info.txt").write_text("".join(lines))
    return lmdb_path


def write_reds(root: Path, frames: int = 6, hw=(64, 80)) -> Path:
    """REDS folders (train_sharp, train_sharp_bicubic/X4) plus BasicSR's two LMDBs of them."""
    for k, clip in enumerate(REDS_CLIPS):
        hr = _frames(k, frames, *hw)
        _write_pngs(root / "train_sharp" / clip, hr, "{:08d}.png".format)
        lr = hr[:, ::4, ::4]  # any LR will do: the test compares layouts, not degradations
        _write_pngs(root / "train_sharp_bicubic" / "X4" / clip, lr, "{:08d}.png".format)
    rel = [f"{c}/{t:08d}.png" for c in REDS_CLIPS for t in range(frames)]
    pack_lmdb(root / "train_sharp", root / "train_sharp_with_val.lmdb", rel)
    pack_lmdb(root / "train_sharp_bicubic" / "X4", root / "train_sharp_bicubic_with_val.lmdb", rel)
    return root


def write_vimeo(root: Path, hw=(32, 32)) -> Path:
    """Vimeo-90K septuplets (sequences, sequences_BIx4, list files) plus all-frames GT and LR7frames LMDBs."""
    im = "im{}.png".format
    for k, seq in enumerate(VIMEO_SEQS):
        hr = _frames(10 + k, 7, *hw)
        _write_pngs(root / "sequences" / seq, hr, lambda t: im(t + 1))
        _write_pngs(root / "sequences_BIx4" / seq, hr[:, ::4, ::4], lambda t: im(t + 1))
    (root / "sep_trainlist.txt").write_text("00001/0001\n00001/0002\n")
    (root / "sep_testlist.txt").write_text("00002/0001\n")
    rel = [f"{s}/im{j}.png" for s in VIMEO_SEQS for j in range(1, 8)]
    pack_lmdb(root / "sequences", root / "vimeo90k_train_GT_all.lmdb", rel)
    pack_lmdb(root / "sequences_BIx4", root / "vimeo90k_train_LR7frames.lmdb", rel)
    return root


REDS_LMDB = {"gt_lmdb": "train_sharp_with_val.lmdb", "lq_lmdb": "train_sharp_bicubic_with_val.lmdb"}
VIMEO_LMDB = {"gt_lmdb": "vimeo90k_train_GT_all.lmdb", "lq_lmdb": "vimeo90k_train_LR7frames.lmdb"}


@pytest.fixture(scope="module")
def reds_root(tmp_path_factory):
    return write_reds(tmp_path_factory.mktemp("reds"))


@pytest.fixture(scope="module")
def vimeo_root(tmp_path_factory):
    return write_vimeo(tmp_path_factory.mktemp("vimeo"))


def _ds(kind, root, **kw):
    return build_dataset(DatasetConfig(kind=kind, root=str(root), **kw))


def assert_same_dataset(a, b):
    """Same clips, same whole clips, same training batches (crops, flips, reversal) for a few seeds."""
    assert a.clips == b.clips
    assert type(a).__name__ != type(b).__name__  # really two different readers
    for i, c in enumerate(a.clips):
        (lr_a, hr_a), (lr_b, hr_b) = a.read_clip(i, range(c.num_frames)), b.read_clip(i, range(c.num_frames))
        np.testing.assert_array_equal(lr_a, lr_b)
        np.testing.assert_array_equal(hr_a, hr_b)
    for seed in (0, 1):
        args = dict(seed=seed, step=2, num_frames=4, lr_patch=6, batch_size=3, aug=ALL_AUG)
        (la, ha), (lb, hb) = make_batch(a, **args), make_batch(b, **args)
        assert torch.equal(la, lb) and torch.equal(ha, hb)


@pytest.mark.parametrize("split", ["train", "REDS4", "all"])
def test_reds_lmdb_equals_folders(reds_root, split):
    lmdb_ds = _ds("reds", reds_root, split=split, **REDS_LMDB)
    assert lmdb_ds.lq is not None
    assert_same_dataset(_ds("reds", reds_root, split=split), lmdb_ds)
    expected = {"train": ["001", "012"], "REDS4": ["000", "011"], "all": list(REDS_CLIPS)}[split]
    assert [c.name for c in lmdb_ds.clips] == expected
    assert lmdb_ds.clips[0].hr_hw == (64, 80) and lmdb_ds.clips[0].lr_hw == (16, 20)


def test_vimeo_lmdb_equals_folders(vimeo_root):
    for split in ("train", "test"):
        folder, lmdb_ds = _ds("vimeo", vimeo_root, split=split), _ds("vimeo", vimeo_root, split=split, **VIMEO_LMDB)
        assert_same_dataset(folder, lmdb_ds)
    every = _ds("vimeo", vimeo_root, split="all", **VIMEO_LMDB)
    assert [c.name for c in every.clips] == list(VIMEO_SEQS)
    assert all(c.num_frames == 7 for c in every.clips)
    # Absolute LMDB paths need no root.
    absolute = build_dataset(DatasetConfig(kind="vimeo", split="all", clips=["00002/0001"],
                                           gt_lmdb=str(vimeo_root / VIMEO_LMDB["gt_lmdb"]),
                                           lq_lmdb=str(vimeo_root / VIMEO_LMDB["lq_lmdb"])))
    assert [c.name for c in absolute.clips] == ["00002/0001"]


def test_lmdb_source_pickles_and_reopens_per_process(reds_root, monkeypatch):
    from mgvsr.data import lmdb as lmdb_module

    train = _ds("reds", reds_root, split="train", **REDS_LMDB)
    val = _ds("reds", reds_root, split="REDS4", **REDS_LMDB)  # the same folders, open once per process
    first = train.read_clip(0, [0, 1])
    val.read_clip(0, [0])
    copy = pickle.loads(pickle.dumps(train))  # what a spawned DataLoader worker receives
    np.testing.assert_array_equal(copy.read_clip(0, [0, 1])[1], first[1])
    env = lmdb_module.open_environment(train.gt.path)
    monkeypatch.setattr(lmdb_module, "_ENVS_PID", -1)  # as seen from a forked worker
    np.testing.assert_array_equal(train.read_clip(0, [0, 1])[1], first[1])
    assert lmdb_module.open_environment(train.gt.path) is not env


def _fixed_shape(step: int) -> tuple[int, int, int]:
    return 3, 8, 2  # T, LR patch, batch


def test_dataloader_workers_read_lmdb_like_the_main_process(reds_root):
    """A forked worker (it inherits the parent's open environment) reads the same batches."""
    from torch.utils.data import DataLoader

    from mgvsr.data import StepBatches

    ds = _ds("reds", reds_root, **REDS_LMDB)
    batches = StepBatches(ds, _fixed_shape, seed=4, rank=0, world_size=1, aug=ALL_AUG, intervals=(1,))
    ref = [batches[s] for s in range(3)]
    loader = DataLoader(batches, batch_size=None, sampler=range(3), num_workers=1, multiprocessing_context="fork")
    got = list(loader)
    assert len(got) == 3
    for (a, b), (c, d) in zip(got, ref):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_lmdb_without_lq_needs_on_the_fly(reds_root):
    with pytest.raises(DataError, match="lq_lmdb.*lr_source: on_the_fly"):
        _ds("reds", reds_root, gt_lmdb=REDS_LMDB["gt_lmdb"])
    ds = _ds("reds", reds_root, gt_lmdb=REDS_LMDB["gt_lmdb"], lr_source="on_the_fly")
    assert ds.lq is None
    lr, hr = ds.read_clip(0, [0, 1])
    assert lr.shape == (2, 16, 20, 3) and hr.shape == (2, 64, 80, 3)


def _copy_lmdb(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _put(lmdb_path: Path, key: str, frame: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    env = lmdb.open(str(lmdb_path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(key.encode("ascii"), buf.getvalue())
    env.close()


def _broken(tmp_path, reds_root):
    gt = _copy_lmdb(reds_root / REDS_LMDB["gt_lmdb"], tmp_path / "gt.lmdb")
    lq = _copy_lmdb(reds_root / REDS_LMDB["lq_lmdb"], tmp_path / "lq.lmdb")
    return gt, lq


def _build(gt: Path, lq: Path, **kw):
    return build_dataset(DatasetConfig(kind="reds", split="all", gt_lmdb=str(gt), lq_lmdb=str(lq), **kw))


def test_missing_files_are_named(tmp_path, reds_root):
    gt, lq = _broken(tmp_path, reds_root)
    (lq / "meta_info.txt").unlink()
    with pytest.raises(DataError, match=r"lq\.lmdb/meta_info\.txt: meta_info\.txt not found"):
        _build(gt, lq)
    (gt / "data.mdb").unlink()
    with pytest.raises(DataError, match=r"gt\.lmdb/data\.mdb: not found"):
        _build(gt, lq)
    with pytest.raises(DataError, match=r"nowhere\.lmdb: LQ LMDB folder not found"):
        _build(reds_root / REDS_LMDB["gt_lmdb"], tmp_path / "nowhere.lmdb")


def test_listed_key_absent_from_database(tmp_path, reds_root):
    gt, lq = _broken(tmp_path, reds_root)
    with open(gt / "meta_info.txt", "a") as f:
        f.write("012/00000006.png (64,80,3) 1\n")
    with open(lq / "meta_info.txt", "a") as f:
        f.write("012/00000006.png (16,20,3) 1\n")
    with pytest.raises(DataError, match=r"gt\.lmdb: key '012/00000006' is listed in meta_info\.txt but absent"):
        _build(gt, lq)


def test_stored_frame_size_disagreeing_with_meta_info(tmp_path, reds_root):
    gt, lq = _broken(tmp_path, reds_root)
    _put(gt, "001/00000003", np.zeros((60, 80, 3), np.uint8))
    with pytest.raises(DataError, match=r"gt\.lmdb: key '001/00000003': stored frame is \(60, 80\).*says \(64, 80\)"):
        _build(gt, lq)


def test_undecodable_value_is_named(tmp_path, reds_root):
    gt, lq = _broken(tmp_path, reds_root)
    env = lmdb.open(str(lq), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.put(b"011/00000002", b"not a png")
    env.close()
    with pytest.raises(DataError, match=r"lq\.lmdb: key '011/00000002': not a readable image"):
        _build(gt, lq)


def test_scale_mismatch_between_gt_and_lq(tmp_path, reds_root):
    gt, lq = _broken(tmp_path, reds_root)
    meta = (lq / "meta_info.txt").read_text().replace("(16,20,3)", "(32,40,3)")
    (lq / "meta_info.txt").write_text(meta)
    with pytest.raises(DataError, match=r"lq\.lmdb/meta_info\.txt: '000/00000000' is \(32, 40\).*scale 4 = \(16, 20\)"):
        _build(gt, lq)


def test_malformed_meta_info_line(tmp_path, reds_root):
    gt, lq = _broken(tmp_path, reds_root)
    (gt / "meta_info.txt").write_text("000/00000000.png 720x1280 1\n")
    with pytest.raises(DataError, match=r"gt\.lmdb/meta_info\.txt:1: expected"):
        _build(gt, lq)


def test_vimeo_gt_only4th_is_explained(tmp_path, vimeo_root):
    rel = [f"{s}/im4.png" for s in VIMEO_SEQS]
    gt = pack_lmdb(vimeo_root / "sequences", tmp_path / "vimeo90k_train_GT_only4th.lmdb", rel)
    with pytest.raises(DataError, match="only the centre frame im4"):
        build_dataset(DatasetConfig(kind="vimeo", root=str(vimeo_root), split="all", gt_lmdb=str(gt),
                                    lq_lmdb=VIMEO_LMDB["lq_lmdb"]))


def test_vimeo_lmdb_split_needs_its_list(tmp_path, vimeo_root):
    gt = vimeo_root / VIMEO_LMDB["gt_lmdb"]
    with pytest.raises(DataError, match="sep_trainlist.txt: Vimeo-90K list file not found.*split: all"):
        build_dataset(DatasetConfig(kind="vimeo", root=str(tmp_path), gt_lmdb=str(gt), lr_source="on_the_fly"))


def test_lmdb_only_for_reds_and_vimeo(reds_root):
    with pytest.raises(DataError, match="kind reds or vimeo"):
        _ds("vid4", reds_root, **REDS_LMDB)
    with pytest.raises(DataError, match="without gt_lmdb"):
        _ds("reds", reds_root, lq_lmdb=REDS_LMDB["lq_lmdb"])


def test_training_with_validation_on_lmdb(tmp_path, reds_root):
    """Two steps on the LMDB train split with REDS4 validation (same LMDB folders, opened once)."""
    from mgvsr.config import from_dict
    from mgvsr.train import train

    lmdb_set = {"kind": "reds", "root": str(reds_root), **REDS_LMDB}
    cfg = from_dict({
        "model": {"name": "basicvsr", "num_feat": 4, "num_block": 1},
        "data": {"train": {**lmdb_set, "split": "train"},
                 "val": {**lmdb_set, "split": "REDS4", "clips": ["011"], "max_frames": 2}},
        "schedule": {"kind": "fixed", "total_iters": 2, "num_frames": 2, "patch_size": 16, "batch_size": 1},
        "optim": {"lr": 1e-3, "fix_flow_iters": 1},
        "train": {"name": "lmdb", "out_dir": str(tmp_path), "log_every": 1, "val_every": 2, "save_every": 2,
                  "tensorboard": False, "progress": False, "seed": 5},
    })
    summary = train(cfg)
    assert summary["steps"] == 2 and np.isfinite(summary["val_psnr_y"])
    assert (tmp_path / "lmdb" / "weights" / "model.safetensors").is_file()


def test_cli_eval_on_lmdb_equals_folders(tmp_path, reds_root, capsys):
    import json

    from mgvsr.cli import main

    def scores(name, *extra):
        out = tmp_path / f"{name}.json"
        rc = main(["eval", "--bicubic", "--data", f"reds:{reds_root}", "--out", str(out), "--no-progress", *extra])
        assert rc == 0, capsys.readouterr()
        (result,) = json.loads(out.read_text())["results"]
        return result["channels"]

    lmdb_scores = scores("lmdb", "--gt-lmdb", REDS_LMDB["gt_lmdb"], "--lq-lmdb", REDS_LMDB["lq_lmdb"])
    assert lmdb_scores == scores("folder")
    assert np.isfinite(lmdb_scores["rgb"]["average"]["psnr"])
    # Without the LQ LMDB: one line naming what is missing, no traceback.
    assert main(["eval", "--bicubic", "--data", f"reds:{reds_root}", "--gt-lmdb", REDS_LMDB["gt_lmdb"],
                 "--out", str(tmp_path / "x.json"), "--no-progress"]) == 2
    assert "set lq_lmdb" in capsys.readouterr().err


def test_pack_cache_from_lmdb(tmp_path, reds_root):
    from mgvsr.cli import main

    cache = tmp_path / "cache"
    assert main(["prepare", "--cache", str(cache), "--kind", "reds", "--root", str(reds_root), "--split", "all",
                 "--gt-lmdb", REDS_LMDB["gt_lmdb"], "--lq-lmdb", REDS_LMDB["lq_lmdb"]]) == 0
    lmdb_ds = _ds("reds", reds_root, split="all", **REDS_LMDB)
    assert_same_dataset(lmdb_ds, _ds("reds", reds_root, split="all", cache=str(cache)))
