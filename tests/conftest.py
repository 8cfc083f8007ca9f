import os
import tempfile

import pytest
import torch

# `noisecraft serve` and `generate --gallery` keep pictures in the user's data folder: never the real one in tests
# (child processes inherit this).
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="noisecraft-test-data-")
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="noisecraft-test-config-")  # the local signing identity

# The suite's models are tiny: on a busy 2-core machine one thread is many times faster than two
# (thread hand-offs dominate kernels of microseconds).
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
