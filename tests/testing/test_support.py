"""The README's support matrix is the one the family tests are parametrised from."""
import pathlib

from vtp_compile.methods.registry import method_names
from vtp_compile.testing import support


def test_readme_prints_the_tested_matrix():
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    assert support.matrix() in readme, "README out of date: python -m vtp_compile.testing.support"


def test_every_method_is_in_the_matrix():
    assert set(method_names()) == set(support.METHODS) | set(support.LLAVA_ONLY)
