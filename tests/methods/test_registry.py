import pytest

from vtp_compile.methods.registry import get_method, method_names


def test_registry_lists_implemented_methods():
    assert {"fastv", "random", "divprune"} <= set(method_names())


def test_unknown_method_names_the_available_ones():
    with pytest.raises(ValueError, match="available: .*divprune.*fastv"):
        get_method("nuwa")


def test_every_method_documents_its_defaults():
    for name in method_names():
        m = get_method(name)
        assert m.__doc__ and m.paper
        assert isinstance(m.defaults, dict)
