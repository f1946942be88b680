"""vLLM tests run vLLM in this process (no engine-core or worker subprocesses: a start-up of a
few seconds instead of 20-60 s); tests/serving/vllm/test_server.py starts a real ``vllm serve``.

Without vLLM installed (the main environment) the tests that need it are skipped; the vLLM
environment's target (``make test-vllm``) sets ``VTP_REQUIRE_VLLM=1``, which turns a missing
vLLM into an error instead.
"""
import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import importlib.util  # noqa: E402

import pytest  # noqa: E402

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
if os.environ.get("VTP_REQUIRE_VLLM") == "1" and not HAVE_VLLM:
    raise RuntimeError("VTP_REQUIRE_VLLM=1 but vLLM is not importable in this environment")


# modules whose engines need parallel groups of their own (an MoE model's expert-parallel group):
# they run in a process without other engines (make test-vllm runs them after the rest)
OWN_PROCESS = ("test_qwen3_moe.py",)


def pytest_collection_modifyitems(config, items):
    if not HAVE_VLLM:
        skip = pytest.mark.skip(reason="vLLM is not installed (make test-vllm runs these)")
        for item in items:
            if item.get_closest_marker("vllm") is not None:
                item.add_marker(skip)
        return
    engines = {item.path.name for item in items if item.get_closest_marker("vllm") is not None}
    for name in OWN_PROCESS:
        if name in engines and len(engines) > 1:
            skip = pytest.mark.skip(reason=f"{name} runs in a process of its own (vLLM builds its "
                                    "parallel groups once per process; an MoE engine needs an "
                                    f"expert-parallel group): pytest tests/serving/vllm/{name}")
            for item in items:
                if item.path.name == name:
                    item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from .support import Tiny
    return Tiny.make(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def engine(tiny):
    """One in-process engine without engine-wide vtp options: requests carry their own."""
    return tiny.engine()


@pytest.fixture(scope="session")
def engine_chunked(tiny):
    """Chunked prefill (vLLM's default) with 64-token chunks, so that image runs straddle chunks."""
    return tiny.engine(max_num_batched_tokens=64, max_num_seqs=4)


@pytest.fixture(scope="session")
def tiny_next(tmp_path_factory):
    from .support import Tiny
    return Tiny.make(tmp_path_factory.mktemp("tiny_llava_next"), builder="build_next")


@pytest.fixture(scope="session")
def engine_next(tiny_next):
    """Session-scoped like ``engine``: in-process engines share vLLM's distributed state, and
    shutting one down mid-session tears it down for the other."""
    return tiny_next.engine()


@pytest.fixture
def record(tmp_path, monkeypatch):
    path = tmp_path / "kept.jsonl"
    monkeypatch.setenv("VTP_VLLM_RECORD", str(path))

    def read():
        import json
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        path.unlink()
        return rows
    return read


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory):
    from .qwen_support import TinyQwen
    return TinyQwen.make(tmp_path_factory.mktemp("tiny_qwen2_5_vl"), "qwen2_5_vl")


@pytest.fixture(scope="session")
def engine_qwen(tiny_qwen):
    """Qwen2.5-VL with 64-token prefill chunks (chunked prefill is vLLM's default): prompts with
    two images, and batches, cross chunk edges inside image runs; 32-token KV blocks, so that
    short prompts share cached blocks."""
    return tiny_qwen.engine(max_num_batched_tokens=64, block_size=32)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    from .qwen_support import TinyQwen
    return TinyQwen.make(tmp_path_factory.mktemp("tiny_qwen2_vl"), "qwen2_vl")


@pytest.fixture(scope="session")
def engine_qwen2(tiny_qwen2):
    return tiny_qwen2.engine()


@pytest.fixture(scope="session")
def tiny_ov(tmp_path_factory):
    from .support import Tiny
    return Tiny.make(tmp_path_factory.mktemp("tiny_llava_onevision"), builder="build_onevision")


@pytest.fixture(scope="session")
def engine_ov(tiny_ov):
    return tiny_ov.engine(limit_mm_per_prompt={"image": 2, "video": 1})


@pytest.fixture(scope="session")
def tiny_gemma3(tmp_path_factory):
    from .gemma3_support import TinyGemma3
    return TinyGemma3.make(tmp_path_factory.mktemp("tiny_gemma3"))


@pytest.fixture(scope="session")
def engine_gemma3(tiny_gemma3):
    return tiny_gemma3.engine(enable_mm_embeds=False)


@pytest.fixture(scope="session")
def tiny_internvl(tmp_path_factory):
    from .internvl_support import TinyInternVL
    return TinyInternVL.make(tmp_path_factory.mktemp("tiny_internvl"))


@pytest.fixture(scope="session")
def engine_internvl(tiny_internvl):
    """HF-format InternVL (vLLM's InternS1 class) with 64-token prefill chunks: a batch's image
    runs (up to 80 slots with the markers) cross chunk edges."""
    return tiny_internvl.engine(max_num_batched_tokens=64, limit_mm_per_prompt={"image": 2, "video": 1})


@pytest.fixture(scope="session")
def engine_hf(tiny):
    """The tiny LLaVA on vLLM's Transformers backend (``model_impl="transformers"``), beside the
    session's engine of vLLM's own LLaVA class: the backend's changes to transformers' classes
    are undone once it is built (support.transformers_classes_kept)."""
    return tiny.engine(model_impl="transformers")


@pytest.fixture(scope="session")
def tiny_idefics3_tiled(tmp_path_factory):
    """Idefics3 with image splitting (112 px scenes give 2 x 2 tiles and the global one): its split
    images are several runs, which the plugin refuses on vLLM's Transformers backend."""
    from .support import Tiny
    return Tiny.make(tmp_path_factory.mktemp("tiny_idefics3"), builder="build_idefics3")


@pytest.fixture(scope="session")
def engine_unadapted(tiny_idefics3_tiled):
    """The tiled Idefics3 on vLLM's own Idefics3 class (the plugin's adapter set aside while the
    engine is built): a model without an adapter, for the guard."""
    from .support import unadapted
    with unadapted("Idefics3ForConditionalGeneration", "idefics3"):
        return tiny_idefics3_tiled.engine(limit_mm_per_prompt={"image": 1})


@pytest.fixture(scope="session")
def tiny_idefics3(tmp_path_factory):
    from .idefics3_support import TinyIdefics3
    return TinyIdefics3.make(tmp_path_factory.mktemp("tiny_idefics3"))


@pytest.fixture(scope="session")
def engine_idefics3(tiny_idefics3):
    """Idefics3 with ``do_image_splitting=False`` engine-wide (one tile, one run per image) and
    32-token prefill chunks: image runs (38 slots with the markers) cross chunk edges."""
    return tiny_idefics3.engine(max_num_batched_tokens=32)


@pytest.fixture(scope="session")
def tiny_smolvlm(tmp_path_factory):
    pytest.importorskip("num2words", reason="transformers' SmolVLM processor needs num2words")
    from .idefics3_support import TinyIdefics3
    return TinyIdefics3.make(tmp_path_factory.mktemp("tiny_smolvlm"), family="smolvlm")


@pytest.fixture(scope="session")
def engine_smolvlm(tiny_smolvlm):
    return tiny_smolvlm.engine()


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    from .qwen3_support import TinyQwen3
    return TinyQwen3.make(tmp_path_factory.mktemp("tiny_qwen3_vl"), "qwen3_vl")


@pytest.fixture(scope="session")
def engine_qwen3(tiny_qwen3):
    """Qwen3-VL with 64-token prefill chunks and 32-token KV blocks, as ``engine_qwen``."""
    return tiny_qwen3.engine(max_num_batched_tokens=64, block_size=32)


@pytest.fixture(scope="session")
def engine_qwen3_own(tiny_qwen3):
    """The tiny Qwen3-VL on vLLM's own class (the adapter set aside while it is built): what the
    adapter must equal where it prunes nothing."""
    from .support import unadapted
    with unadapted("Qwen3VLForConditionalGeneration", "qwen3_vl"):
        return tiny_qwen3.engine(max_num_batched_tokens=64, block_size=32)
