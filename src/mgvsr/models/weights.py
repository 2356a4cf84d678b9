"""Reading and writing model weights.

Formats read by :func:`load_state` (detected from the file's first bytes, not its extension):

* our ``.safetensors`` files (a flat ``name -> tensor`` mapping);
* BasicSR ``.pth`` checkpoints ``{"params": ..., "params_ema": ...}``;
* MMagic / MMEditing ``.pth`` checkpoints ``{"meta": ..., "state_dict": {"generator.<name>": ...}}``
  (``generator_ema.`` is used instead when EMA weights are present and wanted);
* plain ``torch.save(model.state_dict())`` files, optionally with DDP ``module.`` prefixes.

``.pth`` files are read with ``torch.load(..., weights_only=True)`` only: a file that needs arbitrary
pickled objects is refused with a clear error, never executed.

MMagic's ``BasicVSRNet``, ``BasicVSRPlusPlusNet`` and ``EDVRNet`` names differ from BasicSR's;
:func:`mmagic_to_basicsr` renames them:

==========================================================  ==========================================
MMagic                                                      BasicSR (used by mgvsr)
==========================================================  ==========================================
``backward_resblocks.*`` / ``forward_resblocks.*``          ``backward_trunk.*`` / ``forward_trunk.*``
``upsample1.upsample_conv.*`` / ``upsample2.upsample_conv.*``  ``upconv1.*`` / ``upconv2.*``
``spynet.basic_module.<l>.basic_module.<j>.conv.*``         ``spynet.basic_module.<l>.basic_module.<2j>.*``
EDVR: ``feat_l2_conv1.conv.*`` (and ``l2_conv2``, ``l3_conv{1,2}``)  ``conv_l2_1.*`` (``conv_l2_2``, ``conv_l3_{1,2}``)
EDVR: ``pcd_alignment.*``                                   ``pcd_align.*``
EDVR: ``<ConvModule>.conv.*`` in PCD / TSA (e.g.            ``<name>.*`` (e.g. ``pcd_align.offset_conv1.l3.*``,
``pcd_alignment.offset_conv1.l3.conv.*``,                   ``fusion.feat_fusion.*``)
``fusion.feat_fusion.conv.*``)
==========================================================  ==========================================

``fusion``, ``conv_hr``, ``conv_last``, ``spynet.mean`` / ``spynet.std`` and the residual blocks'
``conv1`` / ``conv2`` have the same names in both; BasicVSR++'s ``feat_extract``, ``deform_align``,
``backbone`` and ``reconstruction`` too (only its upsampler and SPyNet are renamed). The rules are
idempotent on BasicSR names.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Union

import torch
from torch import nn

from mgvsr.errors import MgvsrError

StateDict = dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]

# Top-level entries tried by key="auto", in order.
AUTO_KEYS = ("params_ema", "params", "state_dict")
_MAX_LISTED = 20


class WeightsError(MgvsrError, ValueError):
    """A weights file cannot be read or does not fit the model; the message names the file."""


class WeightsFileNotFoundError(WeightsError, FileNotFoundError):
    """The weights file does not exist."""


# --------------------------------------------------------------------------------------------------
# Key conversion
# --------------------------------------------------------------------------------------------------

_MMAGIC_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^(backward|forward)_resblocks\."), r"\1_trunk."),
    (re.compile(r"^upsample([12])\.upsample_conv\."), r"upconv\1."),
]
# EDVRNet (MMagic): ConvModule wrappers add a ".conv." level; the pyramid convs and PCD are renamed.
_MMAGIC_EDVR_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"^feat_l([23])_conv([12])\.conv\."), r"conv_l\1_\2."),
    (re.compile(r"^pcd_alignment\."), "pcd_align."),
    (
        re.compile(
            r"^(pcd_align\.(?:offset_conv[123]\.l[123]|feat_conv\.l[12]|cas_offset_conv[12])"
            r"|fusion\.(?:feat_fusion|spatial_attn[1-4]|spatial_attn_l[123]|spatial_attn_add1))\.conv\."
        ),
        r"\1.",
    ),
]
_MMAGIC_SPYNET = re.compile(r"(^|\.)basic_module\.(\d+)\.basic_module\.(\d+)\.conv\.")


def mmagic_to_basicsr(name: str) -> str:
    """Rename one MMagic BasicVSRNet / BasicVSRPlusPlusNet / EDVRNet parameter name to BasicSR's
    (other names pass through)."""
    for pattern, repl in _MMAGIC_RULES + _MMAGIC_EDVR_RULES:
        name = pattern.sub(repl, name)
    return _MMAGIC_SPYNET.sub(
        lambda m: f"{m.group(1)}basic_module.{m.group(2)}.basic_module.{2 * int(m.group(3))}.", name
    )


def _strip_prefix(state: Mapping[str, object], prefix: str) -> dict[str, object]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def strip_wrapper_prefixes(state: Mapping[str, object]) -> dict[str, object]:
    """Drop a DDP ``module.`` and an MMagic ``generator.`` prefix shared by every key."""
    for prefix in ("module.", "generator."):
        state = _strip_prefix(state, prefix)
    return dict(state)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def sniff_format(path: Path) -> str:
    """'safetensors', 'torch' (zip or legacy pickle) or 'unknown' from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if len(head) > 8 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def read_raw(path: Path) -> object:
    """The file's top-level object: a safetensors dict, or what ``torch.load(weights_only=True)`` gives."""
    kind = sniff_format(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error type
            raise WeightsError(f"{path}: cannot read safetensors file (corrupt or truncated?): {err}") from None
    if kind == "torch":
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise WeightsError(
                f"{path}: refused to load: the checkpoint contains pickled objects other than tensors and "
                "plain containers (torch.load with weights_only=True). Re-save only the state dict "
                f"(e.g. torch.save(model.state_dict(), ...)) from a trusted environment. Details: {err}"
            ) from None
        except Exception as err:
            raise WeightsError(f"{path}: cannot read PyTorch checkpoint (corrupt or truncated?): {err}") from None
    raise WeightsError(f"{path}: not a .safetensors or PyTorch .pth checkpoint (unrecognised file header)")


def _select_entry(raw: Mapping[str, object], key: str, path: Path) -> Mapping[str, object]:
    if key == "auto":
        for k in AUTO_KEYS:
            if isinstance(raw.get(k), Mapping):
                return raw[k]  # type: ignore[return-value]
        return raw
    if key == "none":
        return raw
    if not isinstance(raw.get(key), Mapping):
        found = ", ".join(sorted(str(k) for k in raw)[:_MAX_LISTED])
        raise WeightsError(f"{path}: no '{key}' entry in the checkpoint; top-level keys: {found}")
    return raw[key]  # type: ignore[return-value]


def _select_generator(state: Mapping[str, object], prefer_ema: bool) -> Mapping[str, object]:
    """MMagic stores the network under ``generator.`` (and EMA weights under ``generator_ema.``)."""
    prefixes = ("generator_ema.", "generator.") if prefer_ema else ("generator.", "generator_ema.")
    for prefix in prefixes:
        picked = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return state


def load_state(path: PathLike, key: str = "auto", map_mmagic: bool = True) -> StateDict:
    """Read a weights file into a flat ``name -> tensor`` dict (on CPU) with BasicSR names.

    Args:
        path: ``.safetensors`` or ``.pth`` file (format detected from the content).
        key: which entry of a checkpoint dict to use. ``"auto"`` (default) prefers ``params_ema``
            (EMA weights) over ``params`` over ``state_dict``, else the mapping itself; in MMagic
            files it prefers ``generator_ema.`` over ``generator.``. ``"params"`` picks the non-EMA
            BasicSR weights (and ``generator.`` in MMagic files), ``"params_ema"`` / ``"state_dict"``
            pick that entry, ``"none"`` uses the top-level mapping as is.
        map_mmagic: rename MMagic BasicVSRNet names to BasicSR's (see :func:`mmagic_to_basicsr`).

    DDP ``module.`` prefixes are stripped. Raises :class:`WeightsError` (or
    :class:`WeightsFileNotFoundError`) with the file name for every problem.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileNotFoundError(f"weights file not found: {path}")
    raw = read_raw(path)
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{path}: expected a dict of tensors, got {type(raw).__name__}")
    state = _select_entry(raw, key, path)
    state = _select_generator(state, prefer_ema=key in ("auto", "params_ema"))
    state = _strip_prefix(state, "module.")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"{path}: entries are not tensors: {', '.join(map(str, bad[:_MAX_LISTED]))} "
            "(choose the weights entry with key=..., e.g. 'params' or 'state_dict')"
        )
    if not state:
        raise WeightsError(f"{path}: contains no tensors")
    if map_mmagic:
        state = {mmagic_to_basicsr(k): v for k, v in state.items()}
    return state  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Loading into a model
# --------------------------------------------------------------------------------------------------


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _constant_buffers(model: nn.Module) -> set[str]:
    """State-dict names of fixed buffers that older files may lack (SPyNet's ImageNet mean/std).

    A module lists them in a ``CONSTANT_BUFFERS`` class attribute, so this file needs no import of
    the architectures (which import this module to load their pretrained weights).
    """
    names = set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        names.update(prefix + name for name in getattr(type(mod), "CONSTANT_BUFFERS", ()))
    return names


def check_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, strict: bool = True
) -> StateDict:
    """Return ``state`` completed with constant buffers, or raise listing every mismatch.

    Shape mismatches are always errors; missing / unexpected keys only when ``strict``.
    """
    own = model.state_dict()
    state = dict(state)
    for name in _constant_buffers(model):
        if name not in state and name in own:
            state[name] = own[name].detach().clone()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if strict and missing:
        problems.append(f"missing keys ({len(missing)}): {_listed(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_listed(shapes)}")
    if problems:
        raise WeightsError(
            f"{source}: weights do not match {type(model).__name__}:\n  " + "\n  ".join(problems)
        )
    return state


def load_weights(model: nn.Module, path: PathLike, strict: bool = True, key: str = "auto") -> nn.Module:
    """Load a weights file into ``model`` (in place) and return the model.

    ``key`` as in :func:`load_state`. With ``strict`` every model key must be present and no extra
    keys are allowed; a mismatch raises :class:`WeightsError` naming the file and listing the
    missing / unexpected keys and shape mismatches. SPyNet's constant mean/std buffers may be absent.
    """
    state = check_state(model, load_state(path, key=key), str(path), strict=strict)
    model.load_state_dict(state, strict=strict)
    return model


def load_weights_into(module: nn.Module, path: PathLike, prefix: str, ignore_extra: bool = False) -> None:
    """Load a sub-network's weights (SPyNet, EDVR extractor) from its own file or a full model's.

    Keys under ``prefix`` (e.g. ``"spynet."``) are used when present; with ``ignore_extra`` keys the
    module does not have (e.g. EDVR's reconstruction layers) are dropped. Missing keys are errors.
    """
    state = load_state(path)
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if sub:
        state = sub
    if ignore_extra:
        own = module.state_dict()
        state = {k: v for k, v in state.items() if k in own}
    state = check_state(module, state, str(path), strict=True)
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def to_state_dict(model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]]) -> StateDict:
    """Detached, contiguous CPU copies of a model's (or a mapping's) tensors."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"state entry '{k}' is not a tensor ({type(v).__name__})")
        out[k] = v.detach().to("cpu", copy=True).contiguous()
    return out


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file in the target folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_safetensors(
    model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]],
    path: PathLike,
    metadata: Optional[Mapping[str, str]] = None,
) -> Path:
    """Write weights as ``.safetensors`` atomically; ``metadata`` is a str -> str mapping."""
    from safetensors.torch import save_file

    meta = None
    if metadata is not None:
        bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise WeightsError(f"safetensors metadata must map str to str; bad entries: {bad}")
        meta = dict(metadata)
    state = to_state_dict(model_or_state)
    path = Path(path)
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    return path


def export_basicsr(
    model_or_state: Union[nn.Module, Mapping[str, torch.Tensor]],
    path: PathLike,
    ema_state: Optional[Union[nn.Module, Mapping[str, torch.Tensor]]] = None,
) -> Path:
    """Write a BasicSR-style ``.pth``: ``{"params": ...}`` plus ``"params_ema"`` when ``ema_state`` is
    given. Written atomically with ``torch.save``; readable with ``weights_only=True``."""
    ckpt = {"params": to_state_dict(model_or_state)}
    if ema_state is not None:
        ckpt["params_ema"] = to_state_dict(ema_state)
    path = Path(path)
    _atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return path
