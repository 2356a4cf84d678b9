"""``mgvsr export``: convert weights between our ``.safetensors`` and the BasicSR ``.pth`` layout.

Inputs (see :func:`mgvsr.models.loading.read_weights`): our ``.safetensors`` (model config in the
metadata), training checkpoints (``{"model", "ema", "config", "step", ...}``) and BasicSR / MMagic
``.pth`` files (MMagic names are mapped to BasicSR's on reading).

* ``--to basicsr OUT.pth`` writes ``{"params": weights}`` plus ``"params_ema"`` when the input has
  EMA weights (training checkpoints with EMA; a ``.safetensors`` file holds one set only). BasicSR's
  own ``load_network(..., param_key="params")`` reads it, and so does ``torch.load(weights_only=True)``.
* ``--to safetensors OUT.safetensors`` writes one set of weights (EMA when present, unless
  ``--no-ema``) with metadata ``mgvsr_model_config`` (JSON of the ModelConfig fields), so
  ``--weights OUT.safetensors`` alone rebuilds the model. For BasicSR / MMagic inputs the config is
  inferred from the parameter names and shapes (or given with ``--model/--num-feat/--num-block``).

Before writing, the weights are loaded strictly into the model they describe, so a file that would
not load later is refused now. Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

from mgvsr.errors import MgvsrError
from mgvsr.models.loading import METADATA_KEY, build_model, model_config_for, read_weights
from mgvsr.models.weights import check_state, export_basicsr, save_safetensors, strip_wrapper_prefixes

FORMATS = ("basicsr", "safetensors")


class ExportError(MgvsrError, ValueError):
    """Bad export request; the message names the file or option."""


def export_weights(
    src: str | Path,
    dst: str | Path,
    to: str,
    use_ema: bool = True,
    name: Optional[str] = None,
    num_feat: Optional[int] = None,
    num_block: Optional[int] = None,
) -> Path:
    """Convert ``src`` to ``to`` (``"basicsr"`` or ``"safetensors"``) at ``dst``; return ``dst``.

    ``use_ema`` picks the EMA weights for the single set a ``.safetensors`` file holds. The model
    options override the config found in (or inferred from) ``src``.
    """
    if to not in FORMATS:
        raise ExportError(f"--to: {to!r} is not a format; choose one of {list(FORMATS)}")
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve():
        raise ExportError(f"{dst}: output would overwrite the input")
    if dst.parent.exists() and not dst.parent.is_dir():
        raise ExportError(f"{dst}: parent {dst.parent} is not a folder")

    info = read_weights(src)
    cfg = model_config_for(info, name, num_feat, num_block)
    state = strip_wrapper_prefixes(info.state)
    ema = strip_wrapper_prefixes(info.ema) if info.ema is not None else None

    # Load every set we write into the model it claims to be (raises a clear WeightsError if not).
    model = build_model(cfg)
    state = check_state(model, state, str(src), strict=True)
    if ema is not None:
        ema = check_state(model, ema, f"{src} (EMA weights)", strict=True)

    if to == "basicsr":
        return export_basicsr(state, dst, ema_state=ema)
    chosen = ema if (use_ema and ema is not None) else state
    metadata = {
        METADATA_KEY: json.dumps(dataclasses.asdict(cfg)),
        "mgvsr_source": src.name,
        "mgvsr_weights": "ema" if chosen is ema else "raw",
    }
    return save_safetensors(chosen, dst, metadata=metadata)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="input: .safetensors, training checkpoint or BasicSR/MMagic .pth")
    parser.add_argument("--to", required=True, choices=FORMATS, help="output layout")
    parser.add_argument("out", help="output file (OUT.pth for basicsr, OUT.safetensors for safetensors)")
    parser.add_argument("--no-ema", action="store_true", help="safetensors: write the raw weights even if EMA exists")
    parser.add_argument("--model", choices=["basicvsr", "iconvsr"], help="override the model kind")
    parser.add_argument("--num-feat", type=int, help="override the width")
    parser.add_argument("--num-block", type=int, help="override the depth")


def run(args: argparse.Namespace) -> int:
    try:
        out = export_weights(
            args.weights, args.out, args.to, not args.no_ema, args.model, args.num_feat, args.num_block
        )
    except OSError as err:  # project errors (MgvsrError) are reported by cli.main
        print(f"mgvsr export: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.to})")
    return 0
