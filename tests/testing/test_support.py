"""The support matrices in docs/support.md are the tables the tests are parametrised from."""
import pathlib

from vtp_compile.methods.registry import method_names
from vtp_compile.testing import support

PAGE = pathlib.Path(__file__).parents[2] / support.SUPPORT_PAGE


def test_support_page_prints_the_tested_matrix():
    assert support.block(PAGE.read_text(), "vtp_compile.testing.support") == support.matrix(), \
        "docs/support.md out of date: python -m vtp_compile.testing.support"


def test_support_page_prints_the_vllm_matrix():
    from vtp_compile.serving.vllm import support as vllm_support
    assert support.block(PAGE.read_text(), "vtp_compile.serving.vllm.support") == \
        vllm_support.matrix(), "docs/support.md out of date: python -m vtp_compile.serving.vllm.support"


def test_every_method_is_in_the_matrix():
    assert set(method_names()) == set(support.METHODS) | set(support.LLAVA_ONLY) | set(support.FRAME_METHODS)


def test_rewrite_replaces_only_its_block(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(f"intro\n{support.marker('a')}\nold\n{support.END_MARKER}\n"
                    f"{support.marker('b')}\nkeep\n{support.END_MARKER}\n")
    assert support.rewrite(page, "a", "new")
    assert support.block(page.read_text(), "a") == "new"
    assert support.block(page.read_text(), "b") == "keep"
    assert not support.rewrite(page, "a", "new")
