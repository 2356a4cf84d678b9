"""FLOPs of one training step of the real model, counted by PyTorch rather than estimated by hand.

:func:`train_flops` builds the model from its config with ``mgvsr.models.build_model``, runs one
forward pass on a random LR clip of shape (batch, T, 3, patch, patch) and a backward pass of a
scalar loss, counts the FLOPs of every op PyTorch dispatches, and returns the total.

Conventions
-----------
* A FLOP is what :class:`torch.utils.flop_counter.FlopCounterMode` counts: ``2 * MACs`` of
  convolutions and matrix products, in the forward pass and in ``convolution_backward`` (gradients
  of inputs and weights). We use its per-op formulas (``torch.utils.flop_counter.flop_registry``)
  in a small dispatch mode of our own (:class:`_FlopTally`) that skips ``FlopCounterMode``'s
  per-module bookkeeping, which doubled the time; the totals are identical (a test checks this).
  Element-wise ops, ``grid_sample`` (flow warping, and the bilinear sampling inside the pure-PyTorch
  deformable convolution), interpolation and pixel shuffle are not counted; they are a small fraction
  of the total for BasicVSR / IconVSR. The deformable convolutions of EDVR and BasicVSR++ are counted
  through their matrix product (``2 * C_out * C_in * k * k`` per output pixel, as a plain conv).
* Every model is counted as trained: EDVR on one window of ``num_frame`` frames (its output is the
  centre frame), the recurrent models on the whole clip.
* Every parameter is counted as trainable (i.e. after ``optim.fix_flow_iters``, when SPyNet learns).
* The model is built on PyTorch's ``meta`` device when it supports it (no memory, no arithmetic),
  otherwise on the CPU. On ``meta`` the cost is Python dispatch overhead alone; repeated ops (the
  same residual block on every frame) have their output shapes memoised by :class:`_MetaShapeCache`,
  so counting BasicVSR 64/30 at T=15, patch 64 takes about 1 s on one CPU core and the nine shapes
  of the default multigrid schedule 5-10 s. The meta model is built once per model config.
* Counting always uses batch 1; every counted op is linear in the batch, so the result is multiplied
  by ``batch``. Results are cached per (model config, T, patch) for the life of the process.
* Pretrained-weight paths in the model config are ignored: they do not change the count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

try:  # the per-op formulas behind FlopCounterMode (a module-level dict since torch 2.1)
    from torch.utils.flop_counter import flop_registry as _FLOP_FORMULAS
except ImportError:  # pragma: no cover
    _FLOP_FORMULAS = None

_FLOPS: dict[tuple, float] = {}  # (builder, model config, T, patch) -> FLOPs at batch 1
_MODELS: dict[tuple, nn.Module] = {}  # (builder, model config) -> model
_META_SHAPES: dict[tuple, tuple] = {}  # (op, input metadata) -> output (shape, stride, dtype)


class _MetaShapeCache(TorchDispatchMode):
    """Memoise the output shape of pure ops on ``meta`` tensors, keyed by the inputs' metadata.

    Shape inference of some ops on ``meta`` (element-wise ops, ``grid_sample``) runs Python
    reference code that costs far more than the tensor math it stands in for. A recurrent VSR model
    repeats the same op on the same shapes for every frame, so the second call onwards returns a
    fresh ``empty_strided`` tensor with the remembered shape, stride and dtype. The memo (``seen``)
    is shared by all counts in the process: per-frame ops of a clip of any length have the same keys. Only ops that neither
    mutate nor alias their inputs and return one tensor are memoised; the counter above this mode
    still sees every op, so the count is unchanged.
    """

    def __init__(self, seen: dict[tuple, tuple]) -> None:
        super().__init__()
        self._seen = seen

    @staticmethod
    def _key(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.stride(), value.dtype, value.device.type)
        if isinstance(value, (list, tuple)):
            return tuple(_MetaShapeCache._key(v) for v in value)
        if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
            return value
        if isinstance(value, (torch.memory_format, torch.layout)):
            return value
        raise TypeError(type(value))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        schema = func._schema
        pure = (
            not schema.is_mutable
            and len(schema.returns) == 1
            and schema.returns[0].alias_info is None
            and str(schema.returns[0].type) == "Tensor"
        )
        if not pure:
            return func(*args, **kwargs)
        try:
            key = (func, self._key(args), self._key(sorted(kwargs.items())))
        except TypeError:
            return func(*args, **kwargs)
        if key in self._seen:
            shape, stride, dtype = self._seen[key]
            return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and out.device.type == "meta":
            self._seen[key] = (tuple(out.shape), out.stride(), out.dtype)
        return out


class _FlopTally(TorchDispatchMode):
    """Add up ``FlopCounterMode``'s per-op FLOP formulas for every op dispatched below autograd."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FLOP_FORMULAS.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _counter() -> Any:
    """A context manager with ``get_total_flops()``: our tally, or FlopCounterMode if unavailable."""
    if _FLOP_FORMULAS is None:  # pragma: no cover
        return FlopCounterMode(display=False)
    tally = _FlopTally()
    tally.get_total_flops = lambda: tally.total  # type: ignore[attr-defined]
    return tally


def count_train_flops(model: nn.Module, num_frames: int, patch: int, batch: int = 1) -> float:
    """FLOPs of forward + backward of ``model`` on a (batch, T, 3, patch, patch) clip.

    The input lives on the device of the model's first parameter (``meta`` works). Parameter
    gradients are cleared afterwards.
    """
    if num_frames < 1 or patch < 1 or batch < 1:
        raise ValueError(f"need num_frames, patch, batch >= 1; got {num_frames}, {patch}, {batch}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    clip = torch.rand(batch, num_frames, 3, patch, patch, device=device, dtype=dtype)
    was_training = model.training
    model.train()
    # The shape memo sits below the counter (entered first), so the counter sees every op.
    memo = _MetaShapeCache(_META_SHAPES) if device.type == "meta" else contextlib.nullcontext()
    try:
        with torch.enable_grad(), memo, _counter() as counter:
            out = model(clip)
            out = out[0] if isinstance(out, (tuple, list)) else out
            out.float().mean().backward()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return float(counter.get_total_flops())


def _config_key(model_cfg: Any) -> tuple:
    if dataclasses.is_dataclass(model_cfg):
        return (type(model_cfg).__name__, repr(_without_weights(model_cfg)))
    return (type(model_cfg).__name__, repr(model_cfg))


def _without_weights(model_cfg: Any) -> Any:
    """The same config with every ``*_weights`` path set to None (weights do not change FLOPs)."""
    if not dataclasses.is_dataclass(model_cfg):
        return model_cfg
    paths = {f.name: None for f in dataclasses.fields(model_cfg) if f.name.endswith("weights")}
    return dataclasses.replace(model_cfg, **paths)


def _default_builder() -> Callable[[Any], nn.Module]:
    from mgvsr.models import build_model  # lazy: the models package imports a lot

    return build_model


def train_flops(
    model_cfg: Any,
    num_frames: int,
    patch: int,
    batch: int = 1,
    *,
    builder: Optional[Callable[[Any], nn.Module]] = None,
) -> float:
    """FLOPs of one training step (forward + backward) of the model built from ``model_cfg``.

    ``builder`` defaults to ``mgvsr.models.build_model``; pass another factory to count a different
    network. Counted once per (model config, T, patch) at batch 1 and scaled linearly by ``batch``.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    build = builder or _default_builder()
    key = (build, _config_key(model_cfg), num_frames, patch)
    if key not in _FLOPS:
        model = _model_for(build, model_cfg)
        try:
            _FLOPS[key] = count_train_flops(model, num_frames, patch, 1)
        except (NotImplementedError, RuntimeError) as err:
            if next(model.parameters()).device.type != "meta":
                raise
            warnings.warn(
                f"counting FLOPs on the meta device failed ({type(err).__name__}: {err}); "
                "counting on the CPU instead (slow for large models)",
                RuntimeWarning,
                stacklevel=2,
            )
            model = _MODELS[(build, _config_key(model_cfg))] = build(_without_weights(model_cfg))
            _FLOPS[key] = count_train_flops(model, num_frames, patch, 1)
    return _FLOPS[key] * batch


def _model_for(build: Callable[[Any], nn.Module], model_cfg: Any) -> nn.Module:
    """The model for a config, built once on the meta device (on the CPU if that fails)."""
    key = (build, _config_key(model_cfg))
    if key not in _MODELS:
        cfg = _without_weights(model_cfg)
        try:
            with torch.device("meta"):
                _MODELS[key] = build(cfg)
        except (NotImplementedError, RuntimeError) as err:
            warnings.warn(
                f"building the model on the meta device failed ({type(err).__name__}: {err}); "
                "counting FLOPs on the CPU instead (slow for large models)",
                RuntimeWarning,
                stacklevel=3,
            )
            _MODELS[key] = build(cfg)
    return _MODELS[key]


def clear_cache() -> None:
    """Forget cached models and counts (for tests, or after editing a model's code)."""
    _FLOPS.clear()
    _MODELS.clear()
    _META_SHAPES.clear()
