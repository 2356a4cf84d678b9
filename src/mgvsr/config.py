"""One typed configuration for an experiment.

A run is described by :class:`Config` (model / data / schedule / optim / train sections), loaded from
YAML and adjusted with dotted command-line overrides such as ``train.seed=3`` or
``schedule.spatial_stages=[32,48,64]``. Every key is checked: an unknown key or a value of the wrong
type or outside the allowed choices raises :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from mgvsr.errors import MgvsrError


class ConfigError(MgvsrError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The network. ``num_feat`` / ``num_block`` are each model's width / depth under one name:

    ========== =========================== ===============================================
    name       num_feat is BasicSR's        num_block is BasicSR's
    ========== =========================== ===============================================
    basicvsr   ``num_feat``                 ``num_block`` (per propagation branch)
    iconvsr    ``num_feat``                 ``num_block`` (per propagation branch)
    edvr       ``num_feat``                 ``num_reconstruct_block``
    basicvsrpp ``mid_channels``             ``num_blocks`` (per propagation branch)
    ========== =========================== ===============================================

    The other fields keep BasicSR's argument names and apply to the model named in their comment.
    """

    name: Literal["basicvsr", "iconvsr", "edvr", "basicvsrpp"] = "basicvsr"
    num_feat: int = 64
    num_block: int = 30
    keyframe_stride: int = 5  # IconVSR only
    temporal_padding: int = 2  # IconVSR only
    # EDVR only: window length (the sliding window; training clips have exactly this many frames),
    # PCD deformable groups, residual blocks before alignment, reference frame of the window
    # (null = num_frame // 2), TSA fusion (else a 1x1 conv), pre-deblurring front end.
    num_frame: int = 5
    deformable_groups: int = 8
    num_extract_block: int = 5
    center_frame_idx: Optional[int] = None
    with_tsa: bool = True
    with_predeblur: bool = False
    # BasicVSR++ only: bound of the learned offset residue; clips longer than cpu_cache_length keep
    # intermediate features on the CPU when running on CUDA (saves GPU memory, slower).
    max_residue_magnitude: float = 10.0
    cpu_cache_length: int = 100
    # Width of the HR part of the x4 head (BasicSR: 64; only 64 loads released checkpoints).
    head_feat: int = 64
    # Start training from the model's upsampled-input baseline: the last conv of the x4 head
    # (``conv_last``) starts at zero, so the untrained model outputs exactly its bilinear x4 base
    # instead of base + noise (docs/benchmarks.md, "The demo recipe"). Off = BasicSR's init.
    zero_init_output: bool = False
    scale: int = 4
    # Optional weights to start from (ours .safetensors or BasicSR/MMagic .pth).
    init_weights: Optional[str] = None
    # Optional pretrained SPyNet weights (BasicVSR, IconVSR, BasicVSR++); None = train the flow
    # network from scratch.
    spynet_weights: Optional[str] = None
    # Optional pretrained EDVR weights for IconVSR's keyframe feature extractor.
    edvr_weights: Optional[str] = None

    @property
    def sliding_window(self) -> bool:
        """True for a model that predicts the centre frame of a fixed-length window (EDVR)."""
        return self.name == "edvr"


@dataclass
class DatasetConfig:
    """Where clips come from. ``kind`` picks the on-disk layout (see ``mgvsr.data.sources``)."""

    kind: Literal["reds", "vimeo", "vid4", "frames", "video", "prepared"] = "prepared"
    root: str = ""
    # Layout-specific split: reds: "train" (all but REDS4) | "REDS4" | "all" | BasicSR's official
    # partition (docs/data.md); vimeo: "train" | "test" (| "all" from LMDB); others: ignored unless the layout has one.
    split: str = "train"
    # The LR degradation: BI (bicubic) or BD (blur + subsample); selects the stored LR folder/LMDB.
    degradation: Literal["BI", "BD"] = "BI"
    # Where LR frames come from: "disk" (stored LR; missing LR is an error naming the expected folder),
    # "on_the_fly" (degrade the HR frames), "auto" (stored when present, else on the fly).
    # null = the layout's default: disk for reds/vimeo/vid4 (they ship LR), auto for frames/prepared,
    # on_the_fly for video.
    lr_source: Optional[Literal["disk", "on_the_fly", "auto"]] = None
    # kind reds|vimeo from BasicSR's LMDB folders (scripts/data_preparation/create_lmdb.py) instead of
    # image folders: the GT and LQ ``*.lmdb`` folders, relative to ``root`` unless absolute, e.g. REDS
    # train_sharp_with_val.lmdb + train_sharp_bicubic_with_val.lmdb. Setting gt_lmdb selects LMDB reading.
    gt_lmdb: Optional[str] = None
    lq_lmdb: Optional[str] = None
    # Optional subset of clip names.
    clips: Optional[list[str]] = None
    # Optional path to a packed uint8 cache (built by `mgvsr prepare --cache`).
    cache: Optional[str] = None
    # Validation only: evaluate at most this many frames per clip (0 = all).
    max_frames: int = 0
    # kind "video": split each video into clips of this many frames (0 = one clip per video).
    clip_len: int = 0
    # Decode every clip once into RAM at start (small datasets such as the demo).
    in_memory: bool = False


@dataclass
class DataConfig:
    train: DatasetConfig = field(default_factory=DatasetConfig)
    val: Optional[DatasetConfig] = None
    num_workers: int = 0
    # Augmentation as in BasicVSR training.
    use_flip: bool = True
    use_rot: bool = True
    use_reverse: bool = False
    # Frame interval choices for temporal sampling (REDS recipe uses [1]).
    intervals: list[int] = field(default_factory=lambda: [1])


@dataclass
class ScheduleConfig:
    """Shapes and LR multiplier as a pure function of the global step (see ``mgvsr.schedule``).

    ``docs/schedule.md`` gives the exact rounding rules; in short: iteration shares become phase
    boundaries by rounding the cumulative share half up, clip lengths are ``round_half_up(f * T)``
    (at least 2 frames) and patch sizes ``round_half_up(f * patch)`` (at least 16).
    """

    kind: Literal["fixed", "multigrid", "cycles"] = "fixed"
    total_iters: int = 300_000
    # The full (hardest) shape: clip length T, LR patch size, per-device batch.
    num_frames: int = 15
    patch_size: int = 64
    batch_size: int = 4
    # Multigrid: LR patch sizes of the spatial stages (each <= patch_size; the last one should equal it).
    spatial_stages: list[int] = field(default_factory=lambda: [32, 48, 64])
    # Share of iterations per spatial stage (None = equal shares).
    stage_shares: Optional[list[float]] = None
    # Temporal steps inside each spatial stage, as fractions of num_frames.
    temporal_fractions: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0])
    # Share of a stage's iterations per temporal step (None = equal shares).
    temporal_shares: Optional[list[float]] = None
    # Scale the batch so that batch*T*h*w stays <= its full-shape value (Wu et al. 2020), capped at
    # max_batch; the LR is scaled linearly with the batch.
    scale_batch: bool = False
    max_batch: int = 64
    # LR policy: cosine over the run, cosine restarted at every stage (multigrid spatial stage or
    # cycles long cycle), or constant. Warmup: linear from ~0 over the first warmup_iters steps.
    lr_policy: Literal["cosine", "cosine_restart", "constant"] = "cosine"
    warmup_iters: int = 0
    # Where the warmup starts: zero (linear from ~0 to the LR) or base (Goyal et al. 2017: from the
    # LR before large-minibatch scaling, optim.lr, linearly up to the scaled LR; no ramp without scaling).
    warmup_from: Literal["zero", "base"] = "zero"
    # cosine_restart only: a linear warmup of this many steps at every restart (not the first stage).
    restart_warmup_iters: int = 0
    # Cycles schedule (Wu et al.): long-cycle shapes as (T fraction, spatial fraction) pairs, with
    # equal iteration shares; the long cycle is repeated long_cycles times over the run.
    cycle_shapes: list[list[float]] = field(
        default_factory=lambda: [[0.5, 0.5], [0.5, 0.71], [1.0, 0.71], [1.0, 1.0]]
    )
    long_cycles: int = 1


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    eta_min: float = 1e-7
    # SPyNet learns at lr * flow_lr_mult; SPyNet and IconVSR's EDVR extractor are frozen for the
    # first fix_flow_iters steps (BasicSR's BasicVSR recipe).
    flow_lr_mult: float = 0.125
    fix_flow_iters: int = 5000
    loss: Literal["charbonnier", "l1", "mse"] = "charbonnier"
    charbonnier_eps: float = 1e-12
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    ema_decay: float = 0.0  # 0 = no EMA
    # Large-minibatch: LR scaled from ref_batch to the global batch (0 = no scaling).
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    ref_batch: int = 0
    accum_steps: int = 1
    # Adam implementation. auto = fused where torch has a fused kernel for the device (CPU, CUDA, ...),
    # else foreach; plain = the single-tensor loop (what mgvsr used on CPU before fused Adam; torch
    # picked foreach on CUDA). The choices differ only in float rounding; a checkpoint resumes with any.
    adam_impl: Literal["auto", "fused", "foreach", "plain"] = "auto"


@dataclass
class TrainConfig:
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # Autocast: auto = bf16 where the device computes bf16 natively (CUDA with bf16, a CPU with
    # AVX512-BF16/AMX), else none; fp16 is never chosen automatically. bf16 on an AVX2-only CPU is
    # emulated (~40x slower, a warning says so). See docs/performance.md.
    amp: Literal["auto", "none", "bf16", "fp16"] = "none"
    # Model, batches and validation clips in the channels_last memory layout (docs/performance.md);
    # auto = on for CUDA, off elsewhere.
    channels_last: Union[bool, Literal["auto"]] = False
    # torch.compile the training module (opt-in: on a 2-core CPU it compiled for 230 s and stepped 8-18%
    # slower, docs/performance.md).
    compile: bool = False
    log_every: int = 10
    val_every: int = 1000
    save_every: int = 1000
    keep_last: int = 3
    max_bad_steps: int = 5
    resume: str = "none"  # none | auto | path to a checkpoint
    tensorboard: bool = True
    progress: bool = True
    # DDP: how long a collective waits for the other ranks before the run fails instead of hanging.
    # Must cover the longest time one rank spends alone (checkpoint write, end-of-run report).
    dist_timeout_min: int = 30


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------------------
# Conversion with checking
# --------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"a list of {_type_name(inner)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` checked (and, for int->float, converted) against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed:
            return value
        raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {list(allowed)}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return _from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # pragma: no cover


def _from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in hints:
            raise ConfigError(f"unknown key '{full}'; allowed keys here: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], full)
    obj = cls(**kwargs)
    return obj


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (YAML/JSON serialisable)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    cfg = _from_dict(Config, data or {})
    validate(cfg)
    return cfg


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as YAML (so lists and null work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': cannot parse value: {err}") from None
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file (or the defaults when ``path`` is None) and apply dotted overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        data = loaded
    # Start from the file's values, then overlay the overrides (deep).
    data = _deep_copy(data)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    where = f" (in {path})" if path is not None else ""
    try:
        return from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"{err}{where}") from None


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# --------------------------------------------------------------------------------------------------
# Semantic checks (ranges and cross-field consistency)
# --------------------------------------------------------------------------------------------------


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def validate(cfg: Config) -> None:
    m, s, o, t, d = cfg.model, cfg.schedule, cfg.optim, cfg.train, cfg.data
    validate_model(m)

    _validate_schedule(s)
    if m.sliding_window:
        _validate_sliding_window_schedule(m, s)

    _require(o.lr > 0, "optim.lr", "must be > 0")
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "two numbers in [0, 1)")
    _require(o.eta_min >= 0, "optim.eta_min", "must be >= 0")
    _require(o.fix_flow_iters >= 0, "optim.fix_flow_iters", "must be >= 0")
    _require(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0 (0 = off)")
    _require(0 <= o.ema_decay < 1, "optim.ema_decay", "must be in [0, 1) (0 = off)")
    _require(o.accum_steps >= 1, "optim.accum_steps", "must be >= 1")
    _require(o.ref_batch >= 0, "optim.ref_batch", "must be >= 0")
    _require(
        o.lr_scaling == "none" or o.ref_batch > 0,
        "optim.ref_batch",
        "must be > 0 when optim.lr_scaling is linear or sqrt",
    )

    _require(t.log_every >= 1, "train.log_every", "must be >= 1")
    _require(t.val_every >= 0, "train.val_every", "must be >= 0 (0 = no validation)")
    _require(t.save_every >= 1, "train.save_every", "must be >= 1")
    _require(t.keep_last >= 1, "train.keep_last", "must be >= 1")
    _require(t.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
    _require(t.dist_timeout_min > 0, "train.dist_timeout_min", "must be > 0 (minutes)")
    _require(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _require(len(d.intervals) >= 1 and all(i >= 1 for i in d.intervals), "data.intervals", "positive ints")
    for name, ds in (("data.train", d.train), ("data.val", d.val)):
        if ds is None:
            continue
        _require(ds.max_frames >= 0, f"{name}.max_frames", "must be >= 0 (0 = all frames)")
        _require(ds.clip_len >= 0, f"{name}.clip_len", "must be >= 0 (0 = one clip per video)")
        _require(ds.clips is None or len(ds.clips) > 0, f"{name}.clips", "must be null or a non-empty list")


def model_config_from_dict(fields: dict) -> ModelConfig:
    """A checked :class:`ModelConfig` from a plain dict (the ``model`` section alone), e.g. the model
    config stored in a weights file. Cross-section checks (EDVR's clip length) are not applied."""
    model = _convert(dict(fields), ModelConfig, "model")
    validate_model(model)
    return model


def validate_model(m: ModelConfig) -> None:
    """Checks of the ``model`` section on its own."""
    _require(m.num_feat >= 1, "model.num_feat", "must be >= 1")
    _require(m.num_block >= 1, "model.num_block", "must be >= 1")
    _require(m.head_feat >= 1, "model.head_feat", "must be >= 1")
    _require(m.scale == 4, "model.scale", "only x4 is supported (the models' upsampler)")
    _require(m.keyframe_stride >= 1, "model.keyframe_stride", "must be >= 1")
    _require(m.temporal_padding >= 1, "model.temporal_padding", "must be >= 1")
    if m.name == "edvr":
        _require(m.num_frame >= 1, "model.num_frame", "must be >= 1")
        _require(m.deformable_groups >= 1, "model.deformable_groups", "must be >= 1")
        _require(
            m.num_feat % m.deformable_groups == 0,
            "model.num_feat",
            f"must be a multiple of model.deformable_groups ({m.deformable_groups}) for EDVR",
        )
        _require(m.num_extract_block >= 0, "model.num_extract_block", "must be >= 0")
        _require(
            m.center_frame_idx is None or 0 <= m.center_frame_idx < m.num_frame,
            "model.center_frame_idx",
            f"must be null or in 0 .. model.num_frame - 1 ({m.num_frame - 1})",
        )
    if m.name == "basicvsrpp":
        _require(
            m.num_feat % 8 == 0,
            "model.num_feat",
            "must be a multiple of 8 for BasicVSR++ (16 deformable groups over 2 * num_feat channels)",
        )
        _require(m.max_residue_magnitude > 0, "model.max_residue_magnitude", "must be > 0")
        _require(m.cpu_cache_length >= 1, "model.cpu_cache_length", "must be >= 1")


def _validate_sliding_window_schedule(m: ModelConfig, s: ScheduleConfig) -> None:
    """EDVR sees windows of exactly ``model.num_frame`` frames: the schedule may vary the patch size
    (and the batch), never the clip length."""
    why = f"EDVR's window length is fixed by the architecture (model.num_frame = {m.num_frame})"
    _require(s.num_frames == m.num_frame, "schedule.num_frames", f"must equal model.num_frame for EDVR: {why}")
    if s.kind == "multigrid":
        _require(
            all(f == 1.0 for f in s.temporal_fractions),
            "schedule.temporal_fractions",
            f"must be [1.0] for EDVR: {why}, so multigrid varies only the patch size (spatial_stages)",
        )
    if s.kind == "cycles":
        _require(
            all(pair[0] == 1.0 for pair in s.cycle_shapes),
            "schedule.cycle_shapes",
            f"every T fraction must be 1.0 for EDVR: {why}",
        )


def _validate_schedule(s: ScheduleConfig) -> None:
    """Checks of the ``schedule`` section (see ``mgvsr.schedule`` for the semantics)."""
    _require(s.total_iters >= 1, "schedule.total_iters", "must be >= 1")
    _require(s.num_frames >= 1, "schedule.num_frames", "must be >= 1")
    _require(s.patch_size >= 16, "schedule.patch_size", "must be >= 16 (SPyNet needs 16x16 LR input)")
    _require(s.batch_size >= 1, "schedule.batch_size", "must be >= 1")
    _require(len(s.spatial_stages) >= 1, "schedule.spatial_stages", "needs at least one stage")
    _require(all(p >= 16 for p in s.spatial_stages), "schedule.spatial_stages", "every size must be >= 16")
    if s.kind == "multigrid":
        _require(
            all(p <= s.patch_size for p in s.spatial_stages),
            "schedule.spatial_stages",
            f"every size must be <= schedule.patch_size ({s.patch_size}), the full shape",
        )
    _require(len(s.temporal_fractions) >= 1, "schedule.temporal_fractions", "needs at least one entry")
    _require(
        all(0 < f <= 1 for f in s.temporal_fractions), "schedule.temporal_fractions", "fractions in (0, 1]"
    )
    if s.stage_shares is not None:
        _require(
            len(s.stage_shares) == len(s.spatial_stages),
            "schedule.stage_shares",
            f"needs one share per spatial stage ({len(s.spatial_stages)})",
        )
        _require(all(x > 0 for x in s.stage_shares), "schedule.stage_shares", "shares must be > 0")
    if s.temporal_shares is not None:
        _require(
            len(s.temporal_shares) == len(s.temporal_fractions),
            "schedule.temporal_shares",
            f"needs one share per temporal fraction ({len(s.temporal_fractions)})",
        )
        _require(all(x > 0 for x in s.temporal_shares), "schedule.temporal_shares", "shares must be > 0")
    _require(s.warmup_iters >= 0, "schedule.warmup_iters", "must be >= 0")
    _require(s.warmup_iters < s.total_iters, "schedule.warmup_iters", "must be < schedule.total_iters")
    _require(s.restart_warmup_iters >= 0, "schedule.restart_warmup_iters", "must be >= 0")
    _require(s.max_batch >= s.batch_size, "schedule.max_batch", "must be >= schedule.batch_size")
    _require(len(s.cycle_shapes) >= 1, "schedule.cycle_shapes", "needs at least one [T, spatial] pair")
    for i, pair in enumerate(s.cycle_shapes):
        _require(len(pair) == 2, f"schedule.cycle_shapes[{i}]", "must be [T fraction, spatial fraction]")
        _require(all(0 < x <= 1 for x in pair), f"schedule.cycle_shapes[{i}]", "fractions in (0, 1]")
    _require(s.long_cycles >= 1, "schedule.long_cycles", "must be >= 1")
