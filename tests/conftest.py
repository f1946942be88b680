import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    old = torch._dynamo.config.capture_scalar_outputs
    torch._dynamo.config.capture_scalar_outputs = True
    yield
    torch._dynamo.config.capture_scalar_outputs = old
    torch._dynamo.reset()
