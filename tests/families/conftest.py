"""Fixtures shared by the family tests."""
import pytest
import torch

from vtp_compile.testing import support


@pytest.fixture
def dynamo_for(monkeypatch):
    """``dynamo_for(family)``: the Dynamo settings that family needs (support.DYNAMO), for the test."""
    def apply(family):
        for k, v in support.DYNAMO.get(family, {}).items():
            monkeypatch.setattr(torch._dynamo.config, k, v)
    return apply
