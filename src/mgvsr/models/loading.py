"""Config or weights file -> ready model: the one place where mgvsr builds a network.

* :func:`build_model` builds the network a :class:`~mgvsr.config.ModelConfig` describes and, when
  ``init_weights`` is set (training from a pretrained model), loads that file into it.
* :func:`read_weights` reads any weights file mgvsr knows (our ``.safetensors`` with the model
  config in its metadata, a training checkpoint, a BasicSR / MMagic ``.pth``) into a
  :class:`WeightsFile`; :func:`model_config_for` says which model the file holds (metadata,
  checkpoint config, or :func:`infer_model_config` from the parameter names and shapes).
* :func:`build_for_inference` = both: the model described by a file, weights loaded strictly (EMA
  weights when present), in eval mode on a device. ``mgvsr eval``, ``upscale`` and ``export`` and
  the training run's ``init_weights`` all read weights through :func:`read_weights`.

Low-level file formats (safetensors / pickle checks, MMagic renaming, writing) are in
:mod:`mgvsr.models.weights`; every problem raises :class:`~mgvsr.models.weights.WeightsError`
naming the file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from mgvsr.config import ConfigError, ModelConfig
from mgvsr.config import model_config_from_dict as checked_model_config
from mgvsr.models.basicvsr import BasicVSR
from mgvsr.models.basicvsrpp import BasicVSRPlusPlus, infer_basicvsrpp_fields
from mgvsr.models.edvr import EDVR, infer_edvr_fields
from mgvsr.models.iconvsr import IconVSR
from mgvsr.models.weights import (
    WeightsError,
    WeightsFileNotFoundError,
    check_state,
    load_state,
    mmagic_to_basicsr,
    read_raw,
    sniff_format,
    strip_wrapper_prefixes,
)
from mgvsr.runtime import resolve_device

# Metadata key of our .safetensors files that holds the ModelConfig fields as JSON.
METADATA_KEY = "mgvsr_model_config"


# --------------------------------------------------------------------------------------------------
# Config -> model
# --------------------------------------------------------------------------------------------------


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the network described by ``cfg`` (a :class:`mgvsr.config.ModelConfig`).

    Pretrained SPyNet / EDVR weights (``spynet_weights`` / ``edvr_weights``) are loaded into the
    sub-networks, then ``init_weights`` (a full model, strict, read by :func:`read_weights`) if set.
    """
    if cfg.scale != 4:
        raise ValueError(f"model.scale: only x4 is supported, got {cfg.scale}")
    if cfg.name == "basicvsr":
        model: nn.Module = BasicVSR(cfg.num_feat, cfg.num_block, spynet_path=cfg.spynet_weights, head_feat=cfg.head_feat)
    elif cfg.name == "iconvsr":
        model = IconVSR(
            cfg.num_feat,
            cfg.num_block,
            keyframe_stride=cfg.keyframe_stride,
            temporal_padding=cfg.temporal_padding,
            spynet_path=cfg.spynet_weights,
            edvr_path=cfg.edvr_weights,
            head_feat=cfg.head_feat,
        )
    elif cfg.name == "edvr":
        model = EDVR(
            num_feat=cfg.num_feat,
            num_frame=cfg.num_frame,
            deformable_groups=cfg.deformable_groups,
            num_extract_block=cfg.num_extract_block,
            num_reconstruct_block=cfg.num_block,
            center_frame_idx=cfg.center_frame_idx,
            with_predeblur=cfg.with_predeblur,
            with_tsa=cfg.with_tsa,
            head_feat=cfg.head_feat,
        )
    elif cfg.name == "basicvsrpp":
        model = BasicVSRPlusPlus(
            mid_channels=cfg.num_feat,
            num_blocks=cfg.num_block,
            max_residue_magnitude=cfg.max_residue_magnitude,
            spynet_path=cfg.spynet_weights,
            cpu_cache_length=cfg.cpu_cache_length,
            head_feat=cfg.head_feat,
        )
    else:
        raise ValueError(
            f"model.name: unknown model '{cfg.name}'; choose 'basicvsr', 'iconvsr', 'edvr' or 'basicvsrpp'"
        )
    if cfg.zero_init_output:
        # Every model here adds (an upsampled copy of) its input to the output of ``conv_last``.
        conv_last = model.get_submodule("conv_last")
        nn.init.zeros_(conv_last.weight)
        nn.init.zeros_(conv_last.bias)
    if cfg.init_weights:
        load_into(model, read_weights(cfg.init_weights).best_state(), cfg.init_weights)
    return model


def load_into(model: nn.Module, state: dict, source: str | Path) -> nn.Module:
    """Load ``state`` strictly into ``model`` (wrapper prefixes stripped; SPyNet's constant buffers
    may be absent); a mismatch raises :class:`WeightsError` naming ``source``."""
    model.load_state_dict(check_state(model, strip_wrapper_prefixes(state), str(source), strict=True), strict=True)
    return model


# --------------------------------------------------------------------------------------------------
# Weights file -> what it holds
# --------------------------------------------------------------------------------------------------


def model_config_from_dict(fields: dict) -> ModelConfig:
    """Checked ModelConfig from a plain dict (weights-file paths are dropped: nothing is loaded)."""
    fields = {k: v for k, v in dict(fields).items() if k not in ("init_weights", "spynet_weights", "edvr_weights")}
    return checked_model_config(fields)


def read_model_config_metadata(path: str | Path) -> Optional[ModelConfig]:
    """The ModelConfig stored in an mgvsr ``.safetensors`` file's metadata, or None if absent."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises several types for corrupt headers
        raise WeightsError(f"{path}: not a readable .safetensors file ({err})") from None
    text = metadata.get(METADATA_KEY)
    if text is None:
        return None
    try:
        return model_config_from_dict(json.loads(text))
    except (json.JSONDecodeError, ConfigError) as err:
        raise WeightsError(f"{path}: metadata '{METADATA_KEY}' is invalid: {err}") from None


def infer_model_config(state: dict, where: str = "weights") -> ModelConfig:
    """Guess the model and its width and depth from BasicSR- or MMagic-style parameter names.

    EDVR and BasicVSR++ are recognised by the rules in their model modules (``infer_edvr_fields``,
    ``infer_basicvsrpp_fields``); BasicVSR / IconVSR as follows.
    ``num_feat`` is the output width of the backward trunk's first conv; ``num_block`` counts the
    residual blocks of that trunk; IconVSR is recognised by its EDVR keyframe extractor / fusion
    convs, and its ``temporal_padding`` from the width of EDVR's fusion conv (``keyframe_stride`` has
    no parameters and keeps its default). Raises :class:`WeightsError` when the names are not those
    of either model.
    """
    state = strip_wrapper_prefixes(state)
    for infer in (infer_edvr_fields, infer_basicvsrpp_fields):
        fields = infer({mmagic_to_basicsr(k): v for k, v in state.items()})
        if fields is not None:
            return model_config_from_dict(fields)
    trunk = None
    for name in ("backward_trunk", "backward_resblocks"):  # BasicSR, MMagic
        if f"{name}.main.0.weight" in state:
            trunk = name
            break
    if trunk is None:
        sample = ", ".join(sorted(state)[:5])
        raise WeightsError(
            f"{where}: cannot tell the model from the parameter names (no 'backward_trunk.main.0.weight'; "
            f"first keys: {sample}); pass --model/--num-feat/--num-block"
        )
    num_feat = int(state[f"{trunk}.main.0.weight"].shape[0])
    blocks = {k.split(".")[3] for k in state if k.startswith(f"{trunk}.main.2.") and k.endswith("conv1.weight")}
    if not blocks:
        raise WeightsError(f"{where}: found no residual blocks under '{trunk}.main.2.'")
    fields = {"name": "basicvsr", "num_feat": num_feat, "num_block": len(blocks)}
    if "conv_hr.weight" in state:  # width of the HR head (64 in BasicSR/MMagic; smaller in CPU variants)
        fields["head_feat"] = int(state["conv_hr.weight"].shape[0])
    if any(k.startswith(("edvr.", "backward_fusion.", "forward_fusion.")) for k in state):
        fields["name"] = "iconvsr"
        # EDVR's TSA fusion conv reads (2 * temporal_padding + 1) frames of num_feat channels.
        fusion = state.get("edvr.fusion.feat_fusion.weight")
        if fusion is not None:
            fields["temporal_padding"] = (int(fusion.shape[1]) // num_feat - 1) // 2
    return model_config_from_dict(fields)


@dataclass
class WeightsFile:
    """What a weights file holds. ``ema`` is None when the file has no EMA weights."""

    path: Path
    kind: str  # "safetensors" | "checkpoint" (our trainer) | "pth" (BasicSR / MMagic)
    state: dict
    ema: Optional[dict]
    model_cfg: Optional[ModelConfig]  # from metadata or the checkpoint's config; None = unknown

    def best_state(self) -> dict:
        """EMA weights when present (they evaluate better), else the raw weights."""
        return self.ema if self.ema is not None else self.state


def read_weights(path: str | Path) -> WeightsFile:
    """Read ``.safetensors`` (ours), a training checkpoint, or a BasicSR/MMagic ``.pth``.

    Training checkpoints are ``torch.save``'d dicts with ``model``, ``ema`` and ``config`` keys.
    Everything is read with ``weights_only=True``; pickles that need arbitrary code are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileNotFoundError(f"weights file not found: {path}")
    if sniff_format(path) == "safetensors":
        return WeightsFile(path, "safetensors", load_state(str(path)), None, read_model_config_metadata(path))
    obj = read_raw(path)  # weights_only=True; clear WeightsError for refused pickles / corrupt files
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        cfg = None
        config = obj.get("config")
        if isinstance(config, dict) and isinstance(config.get("model"), dict):
            try:
                cfg = model_config_from_dict(config["model"])
            except ConfigError as err:
                raise WeightsError(f"{path}: checkpoint 'config.model' is invalid: {err}") from None
        ema = obj.get("ema")
        if ema is not None and not isinstance(ema, dict):
            raise WeightsError(f"{path}: checkpoint 'ema' must be a state dict or None")
        return WeightsFile(path, "checkpoint", obj["model"], ema, cfg)
    if isinstance(obj, dict) and isinstance(obj.get("params"), dict):
        # BasicSR: keep the raw weights and the EMA weights apart (export writes both back).
        ema = load_state(str(path), key="params_ema") if isinstance(obj.get("params_ema"), dict) else None
        return WeightsFile(path, "pth", load_state(str(path), key="params"), ema, None)
    return WeightsFile(path, "pth", load_state(str(path)), None, None)


def model_config_for(
    info: WeightsFile, name: Optional[str] = None, num_feat: Optional[int] = None, num_block: Optional[int] = None
) -> ModelConfig:
    """The model ``info`` holds (metadata, checkpoint config, or inferred from the EMA / raw weights),
    with ``name`` / ``num_feat`` / ``num_block`` overriding what the file says."""
    cfg = info.model_cfg or infer_model_config(info.best_state(), where=str(info.path))
    overrides = {k: v for k, v in (("name", name), ("num_feat", num_feat), ("num_block", num_block)) if v is not None}
    if not overrides:
        return cfg
    try:
        return model_config_from_dict({**dataclasses.asdict(cfg), **overrides})
    except ConfigError as err:
        raise WeightsError(f"{info.path}: model options: {err}") from None


def build_for_inference(
    weights: str | Path,
    device: str | torch.device = "cpu",
    name: Optional[str] = None,
    num_feat: Optional[int] = None,
    num_block: Optional[int] = None,
) -> tuple[nn.Module, ModelConfig]:
    """Build the model described by ``weights`` (see :func:`model_config_for`), load the weights
    strictly (EMA weights when present) and return ``(model.eval() on device, cfg)``."""
    info = read_weights(weights)
    cfg = model_config_for(info, name, num_feat, num_block)
    model = load_into(build_model(cfg), info.best_state(), weights)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(device).eval(), cfg
