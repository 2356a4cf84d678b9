import os

import pytest

os.environ.setdefault("MGVSR_TESTING", "1")


@pytest.fixture(autouse=True)
def _seed_everything():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield
