import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("MGVSR_TESTING", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Large test inputs (e.g. a real video) live in the project's shared folder, never in the repository:
# beside the checkout (`../shared`, how worktrees are laid out) or inside a copied tree (`shared/`).
SHARED_DIRS = (REPO_ROOT.parent / "shared", REPO_ROOT / "shared")


def shared_data(name: str) -> Path:
    """``shared/data/<name>`` located relative to this checkout (the first candidate if it is nowhere)."""
    for base in SHARED_DIRS:
        path = base / "data" / name
        if path.is_file():
            return path
    return SHARED_DIRS[0] / "data" / name


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported as module ``name`` (the folder is not a package). It is
    registered in ``sys.modules`` so that its dataclasses resolve their module."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def needs_shared_data(name: str) -> pytest.MarkDecorator:
    """Skip a test, with the places looked at as the reason, when ``shared/data/<name>`` is absent."""
    found = shared_data(name).is_file()
    where = " or ".join(str(d / "data") for d in SHARED_DIRS)
    return pytest.mark.skipif(not found, reason=f"{name} not found in {where}")


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield
