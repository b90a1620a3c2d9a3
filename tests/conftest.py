import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
# Small networks: one thread is faster than two contending ones, and the numbers repeat.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
