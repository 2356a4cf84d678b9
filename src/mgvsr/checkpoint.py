"""Atomic training checkpoints: a state dict in, a state dict out.

The :class:`Checkpointer` knows nothing about models or schedules; the trainer decides what goes
into ``state`` (model / optimiser / scaler state dicts, the step, :func:`rng_state`, ...). Anything
saved must be loadable with ``torch.load(weights_only=True)``: tensors, dicts, lists, tuples, ints,
floats, strings, bools and None.

Files are ``<directory>/ckpt_<step:08d>.pt``. A save writes ``.ckpt_<step:08d>.pt.tmp-<pid>`` in the
same directory, flushes and fsyncs it, renames it over the final name with ``os.replace`` (atomic
on POSIX and Windows) and fsyncs the directory, so a crash at any point leaves either the old set of
checkpoints or the new one, never a half-written ``ckpt_*.pt``. A crash can leave a temp file behind;
it is ignored and :meth:`Checkpointer.remove_temp_files` deletes it.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgvsr.errors import MgvsrError

_NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")


class CheckpointError(MgvsrError, RuntimeError):
    """A checkpoint file cannot be read; the message names the file."""


class Checkpointer:
    """Save, list, validate and load checkpoints in one directory.

    ``keep_last``: after each save, the oldest ``ckpt_*.pt`` beyond the newest ``keep_last`` are
    deleted (by step number, not by modification time).
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    # -- naming ---------------------------------------------------------------------------------

    def path_for(self, step: int) -> Path:
        return self.directory / f"ckpt_{step:08d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every ``ckpt_*.pt`` in the directory, oldest first (not validated)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
        return sorted(found)

    # -- save -----------------------------------------------------------------------------------

    def save(self, state: dict, step: int) -> Path:
        """Write ``state`` atomically as the checkpoint of ``step``; then prune beyond ``keep_last``."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        tmp = self.directory / f".{final.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)
        self._prune()
        return final

    def _prune(self) -> None:
        for _, path in self.checkpoints()[: -self.keep_last]:
            path.unlink(missing_ok=True)

    def remove_temp_files(self) -> list[Path]:
        """Delete temp files left by interrupted saves (call only when no save is running)."""
        removed = []
        if self.directory.is_dir():
            for path in self.directory.glob(".ckpt_*.pt.tmp-*"):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    # -- load -----------------------------------------------------------------------------------

    def load(self, path: str | os.PathLike) -> dict:
        """Read a checkpoint onto the CPU (``weights_only=True``); raise :class:`CheckpointError` if the
        file is missing, truncated, corrupt or not a dict."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            raise CheckpointError(
                f"checkpoint {path} is unreadable (truncated or corrupt?): {type(err).__name__}: {err}"
            ) from err
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
        return state

    def latest(self) -> Path | None:
        """The newest checkpoint that loads; unreadable newer ones are skipped with a warning (and
        kept on disk for inspection). None if there is no valid checkpoint."""
        for _, path in reversed(self.checkpoints()):
            try:
                self.load(path)
            except CheckpointError as err:
                warnings.warn(f"skipping {err}", RuntimeWarning, stacklevel=2)
                continue
            return path
        return None


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover  (some filesystems refuse fsync on directories)
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# Random number generators
# --------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """State of Python's ``random``, NumPy's global RNG, torch's CPU RNG and (if available) every
    CUDA device's RNG, made only of ``weights_only``-loadable types."""
    version, internal, gauss_next = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned. CUDA states are restored only if CUDA is available;
    if the device count differs, the common devices are restored and a warning names the mismatch."""
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise KeyError(f"RNG state lacks {missing}; expected the dict returned by rng_state()")
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"]), py["gauss_next"]))
    npst = state["numpy"]
    keys = npst["keys"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state(
        (
            npst["kind"],
            keys.astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda) != count:
            warnings.warn(
                f"checkpoint has RNG states for {len(cuda)} CUDA devices, this machine has {count}; "
                f"restoring the first {min(len(cuda), count)}",
                RuntimeWarning,
                stacklevel=2,
            )
        for index, s in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(s.cpu(), index)
