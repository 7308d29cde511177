import shutil

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # One thread: deterministic reductions and no oversubscription on the 2-core CI machine.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def compiled_kernels():
    """For the compiled-kernel tests: skip where no C++ compiler is present (or the extension is turned off);
    where one is, the build must succeed, so that the kernels are really tested."""
    from rnnlab.kernels import _extension, fused

    if shutil.which("c++") is None or _extension.extension_disabled():
        pytest.skip("no compiled kernels in this environment")
    assert fused.compiled_available(), "fused C++ kernels failed to build (see the RuntimeWarning)"
