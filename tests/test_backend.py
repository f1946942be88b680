"""The backend's own promises: a Dynamo split that a Dynamo setting removes is named in one
WARNING (not only the INFO line of each unpruned piece)."""
import logging

import pytest
import torch

from vtp_compile import backend


def _split_at_nonzero(x):
    y = torch.relu(x) + 1
    idx = torch.nonzero(y > 1.5)      # a data-dependent output shape: Dynamo splits here
    return y.sum() + idx.sum()


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(backend, "_warned_settings", set())
    monkeypatch.setattr(backend, "_breaks_seen", {})
    monkeypatch.setattr(torch._dynamo.config, "capture_dynamic_output_shape_ops", False)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_split_at_a_dynamic_shape_op_warns_once_naming_the_setting(fresh_warnings, caplog):
    f = torch.compile(_split_at_nonzero, backend="vtp", options={"inner_backend": "eager"})
    x = torch.tensor([-1.0, 2.0, 3.0])
    with caplog.at_level(logging.INFO, logger="vtp_compile"):
        assert f(x).item() == _split_at_nonzero(x).item()
        torch._dynamo.reset()
        f(x)
    named = [m for m in _warnings(caplog) if "capture_dynamic_output_shape_ops = True" in m]
    assert len(named) == 1, _warnings(caplog)


def test_no_warning_with_the_setting_on(fresh_warnings, caplog, monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "capture_dynamic_output_shape_ops", True)
    f = torch.compile(_split_at_nonzero, backend="vtp", options={"inner_backend": "eager"})
    with caplog.at_level(logging.INFO, logger="vtp_compile"):
        f(torch.tensor([-1.0, 2.0, 3.0]))
    assert not _warnings(caplog)
