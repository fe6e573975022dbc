import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))  # makes tests/closed_forms.py importable

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def gen():
    """A fresh seeded generator: tests never draw from the global RNG."""
    return torch.Generator().manual_seed(1234)
