import pytest

from vtp_compile.methods.registry import get_method, method_names


def test_registry_lists_implemented_methods():
    import vtp_compile
    want = {"fastv", "random", "divprune", "acgr", "dstp", "alvts", "nuwa", "pdrop", "dart", "sparsevlm"}
    assert want <= set(method_names()) == set(vtp_compile.available_methods())


def test_unknown_method_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown method 'magic'; available: .*acgr.*divprune.*fastv"):
        get_method("magic")


def test_planned_methods_say_not_implemented_yet_and_only_they():
    from vtp_compile.methods.registry import PLANNED
    assert not set(PLANNED) & set(method_names())      # the roadmap error is gone for these
    for name in PLANNED:
        with pytest.raises(ValueError, match=f"'{name}' is not implemented yet; available: .*fastv.*pdrop"):
            get_method(name)


def test_dcp_is_an_alias_of_acgr():
    assert get_method("dcp") is get_method("acgr")


def test_every_method_documents_its_defaults():
    for name in method_names():
        m = get_method(name)
        assert m.__doc__ and m.paper
        assert isinstance(m.defaults, dict)
