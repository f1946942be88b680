import pytest

from vtp_compile.methods.registry import get_method, method_names


def test_registry_lists_implemented_methods():
    assert {"fastv", "random", "divprune", "acgr", "dstp", "alvts", "nuwa"} <= set(method_names())


def test_unknown_method_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown method 'magic'; available: .*acgr.*divprune.*fastv"):
        get_method("magic")


def test_planned_method_says_not_implemented_yet():
    with pytest.raises(ValueError, match="'pdrop' is not implemented yet; available: .*fastv.*nuwa"):
        get_method("pdrop")


def test_dcp_is_an_alias_of_acgr():
    assert get_method("dcp") is get_method("acgr")


def test_every_method_documents_its_defaults():
    for name in method_names():
        m = get_method(name)
        assert m.__doc__ and m.paper
        assert isinstance(m.defaults, dict)
