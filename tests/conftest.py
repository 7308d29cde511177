import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # One thread: deterministic reductions and no oversubscription on the 2-core CI machine.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
