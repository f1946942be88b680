"""``vllm serve`` on 127.0.0.1 (an OpenAI-compatible server) answers image requests pruned.

One server, two bounded requests (engine-wide options, and a request's own ``mm_processor_kwargs``
over them), each compared with the in-process engine given the same prompt tokens and options.
The server process is stopped at the end whatever happens.
"""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .support import examples, greedy

pytestmark = pytest.mark.vllm
# vLLM puts the model's placeholder ("<image>") in the content string itself
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
WIDE = {"method": "divprune", "budget": 16}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body, timeout=60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"HTTP {e.code}: {e.read().decode()[:2000]}") from None


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    (d / "template.jinja").write_text(TEMPLATE)
    port = _port()
    log = open(d / "server.log", "w")
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING",
                                                          "VTP_VLLM_RECORD")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny.path),
         "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--dtype", "float32",
         "--max-model-len", "1024", "--kv-cache-memory-bytes", str(64 << 20),
         "--chat-template", str(d / "template.jinja"), "--chat-template-content-format", "string",
         "--trust-request-mm-kwargs",
         "--mm-processor-kwargs", json.dumps({"vtp": WIDE})],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail("vllm serve exited: " + (d / "server.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail("vllm serve did not start in 240 s: " + (d / "server.log").read_text()[-3000:])
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _chat(base, image, question, extra=None):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    body = {"model": None, "temperature": 0.0, "max_tokens": 5, "return_token_ids": True,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": question}]}]}
    body.update(extra or {})
    models = json.loads(urllib.request.urlopen(base + "/v1/models", timeout=30).read())
    body["model"] = models["data"][0]["id"]
    return _post(base + "/v1/chat/completions", body)


@pytest.mark.parametrize("override", [None, {"budget": 40}], ids=["engine-wide", "per-request"])
def test_server_answers_pruned(server, engine, tiny, override):
    ex = examples(2)[1]
    extra = {"mm_processor_kwargs": {"vtp": override}} if override else None
    r = _chat(server, ex.image, ex.question, extra)
    ids = r["prompt_token_ids"]
    k = {**WIDE, **(override or {})}["budget"]
    assert sum(t == tiny.image_token for t in ids) == k
    assert r["usage"]["prompt_tokens"] == len(ids)
    # the same prompt tokens (image run collapsed to one <image>) and options, in process
    collapsed = [t for i, t in enumerate(ids) if t != tiny.image_token or ids[i - 1] != tiny.image_token]
    local = engine.generate([{"prompt_token_ids": collapsed, "multi_modal_data": {"image": ex.image},
                              "mm_processor_kwargs": {"vtp": {**WIDE, **(override or {})}}}],
                            greedy(5))[0]
    assert list(local.prompt_token_ids) == ids
    assert r["choices"][0]["token_ids"] == list(local.outputs[0].token_ids)
