"""What a user imports to prune a model is the package: importing vtp_compile, and compiling a
VLM with ``backend="vtp"``, pulls in no plotting or imaging library and none of the project's
own tools (scene training, test families, benchmarks, the CLI)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

# never imported by `import vtp_compile` nor by a compile through the backend
TOOLS = ("vtp_compile.scenes", "vtp_compile.testing", "vtp_compile.bench", "vtp_compile.cli",
         "vtp_compile.integrations")
HEAVY = ("matplotlib", "PIL", "tqdm")
ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}


def _modules(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it leaves a JSON-able result in ``out``."""
    code += "\nimport json, sys\nprint(json.dumps(out))\n"
    res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env=ENV)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _offending(names, prefixes):
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def test_import_pulls_in_no_tools_and_no_plotting():
    out = _modules("import sys, vtp_compile\n"
                   "plain = sorted(sys.modules)\n"
                   "import torch; before = set(sys.modules)\n"
                   "vtp_compile.available_methods(); vtp_compile.PruneConfig; vtp_compile.OptionError\n"
                   "out = {'plain': plain, 'all': sorted(sys.modules),\n"
                   "       'new': sorted(set(sys.modules) - before)}")
    assert not _offending(out["plain"], TOOLS + HEAVY)
    assert not _offending(out["all"], TOOLS + ("matplotlib",))
    assert not _offending(out["new"], HEAVY)   # torch itself may load tqdm


def test_compiling_a_vlm_pulls_in_no_tools_and_no_plotting():
    """A tiny LLaVA built from transformers' configs (not vtp_compile.testing), pruned through
    the backend; modules already loaded by transformers itself do not count against vtp."""
    code = """
import sys, torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
torch.manual_seed(0)
vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, image_size=32, patch_size=8, projection_dim=32)
tc = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=64, pad_token_id=0)
cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=5, vision_feature_layer=-2)
cfg._attn_implementation = "sdpa"
model = LlavaForConditionalGeneration(cfg).eval()
ids = torch.tensor([[7, 8] + [5] * 16 + [9, 10, 11]])
inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=torch.randn(1, 3, 32, 32))
with torch.no_grad():
    model(**inputs)
before = set(sys.modules)
import vtp_compile
vtp_compile.configure_dynamo()
fast = torch.compile(model, backend="vtp", options={"method": "fastv", "budget": 4, "layer": 1,
                                                     "inner_backend": "eager"})
with torch.no_grad():
    fast(**inputs)
REPORTS = vtp_compile.reports(model)
assert any(r.sites for r in REPORTS), [r.skipped for r in REPORTS]
out = {"new": sorted(set(sys.modules) - before), "all": sorted(sys.modules)}
"""
    out = _modules(code)
    assert not _offending(out["all"], TOOLS + ("matplotlib",))
    assert not _offending(out["new"], HEAVY)


@pytest.mark.parametrize("blocked, command, extra", [
    ("matplotlib", ["eval", "--n", "1", "--tasks", "counting", "--plot", "x.png"], "plot"),
    ("PIL", ["show", "--task", "counting"], "scenes"),
])
def test_cli_names_the_missing_extra(tmp_path, blocked, command, extra):
    """Without an optional dependency, a command that needs it stops before loading anything,
    naming the extra to install; the other commands still run."""
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from vtp_compile.cli.main import main\n"
            "assert main(['lmms-tasks']) == 0\n"
            f"sys.exit(main({command!r}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env=ENV)
    assert res.returncode == 2, res.stderr
    assert f"vtp_compile[{extra}]" in res.stderr, res.stderr
