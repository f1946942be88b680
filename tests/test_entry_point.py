import subprocess
import sys


def test_backend_found_without_import():
    code = ("import torch\n"
            "from torch._dynamo.backends.registry import list_backends\n"
            "assert 'vtp' in list_backends(exclude_tags=()), list_backends(exclude_tags=())\n"
            "f = torch.compile(lambda x: x * 2, backend='vtp', options={'inner_backend': 'eager'})\n"
            "assert f(torch.ones(2)).tolist() == [2.0, 2.0]\n"
            "assert not torch.cuda.is_initialized()\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_is_lean():
    code = ("import sys, vtp_compile\n"
            "assert 'triton' not in sys.modules, 'importing vtp_compile must not import triton'\n"
            "import torch; assert not torch.cuda.is_initialized()\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unrecognised_graph_falls_back_unchanged(caplog):
    import logging
    import torch
    from tests.helpers import REPORTS
    caplog.set_level(logging.INFO, logger="vtp_compile")
    f = torch.compile(lambda x: torch.relu(x) + 1, backend="vtp", options={"inner_backend": "eager"})
    assert f(torch.tensor([-1.0, 2.0])).tolist() == [1.0, 3.0]
    assert REPORTS[-1].skipped and "graph left unpruned" in caplog.text
