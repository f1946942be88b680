"""``traced_config``: the compiled model's config, read while Dynamo calls the backend."""
import types

import torch

from vtp_compile.graph.traced_model import traced_config


class _Model(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x) * 2


def _seen(model):
    seen = []

    def backend(gm, example_inputs):
        seen.append(traced_config())
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend)(torch.randn(2, 4))
    return seen


def test_the_compiled_models_config_is_seen():
    config = types.SimpleNamespace(model_type="llava_onevision")
    assert _seen(_Model(config)) == [config]


def test_none_without_a_model_config_or_outside_dynamo():
    assert traced_config() is None
    assert _seen(_Model(None)) == [None]
    assert _seen(_Model(types.SimpleNamespace(model_type=3))) == [None]
