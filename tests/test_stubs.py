"""The type stubs (fastnn/_kernels/*.pyi) and the py.typed marker match the compiled modules.

The stubs are written by hand from the ``def`` signatures in csrc/*.pyx; these tests catch a
kernel whose names or parameters changed without its stub (or a stub missing from the build)."""
import ast
import importlib
import inspect
import os
import re
import types

import pytest

import fastnn
import fastnn._kernels

KERNELS_DIR = os.path.dirname(os.path.abspath(fastnn._kernels.__file__))
# Every compiled module the Python layer imports directly has a stub.
STUBBED = ["_config", "activations", "dense", "losses", "dropout", "optim", "network", "stepcall"]


def _stub(name):
    path = os.path.join(KERNELS_DIR, f"{name}.pyi")
    assert os.path.isfile(path), f"no stub {path}"
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _stub_params(fn):
    """Parameter names of a stub function and which have defaults (self dropped)."""
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    defaults = set(names[len(args.posonlyargs + args.args) - len(args.defaults):
                         len(args.posonlyargs + args.args)])
    defaults |= {a.arg for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None}
    if names and names[0] == "self":
        names = names[1:]
    return names, defaults


def _runtime_params(obj, owner=None):
    """Parameter names (and which have defaults) of a compiled function, from inspect or, for a
    cdef class's __init__ (a slot wrapper), from the signature Cython embeds in the docstring."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        doc = (owner.__doc__ or "") if owner is not None else (obj.__doc__ or "")
        m = re.match(r"\s*\w+\((.*?)\)", doc)
        assert m, f"cannot read the signature of {obj!r}"
        names, defaults = [], set()
        for part in filter(None, (p.strip() for p in m.group(1).split(","))):
            decl, _, default = part.partition("=")
            name = decl.split()[-1].lstrip("*")
            names.append(name)
            if default:
                defaults.add(name)
        return names, defaults
    names = [p.name for p in sig.parameters.values() if p.name != "self"]
    defaults = {p.name for p in sig.parameters.values() if p.default is not inspect.Parameter.empty}
    return names, defaults


def _public(namespace):
    return {k for k, v in vars(namespace).items()
            if not k.startswith("_") and not isinstance(v, types.ModuleType)}


@pytest.mark.parametrize("name", STUBBED)
def test_stub_matches_compiled_module(name):
    mod = importlib.import_module(f"fastnn._kernels.{name}")
    tree = _stub(name)
    stub_names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            stub_names.add(node.name)
            assert callable(getattr(mod, node.name, None)), f"{name}.{node.name}: in the stub only"
            assert _stub_params(node) == _runtime_params(getattr(mod, node.name)), \
                f"{name}.{node.name}: stub parameters differ from the compiled function"
        elif isinstance(node, ast.AnnAssign):
            stub_names.add(node.target.id)
            assert hasattr(mod, node.target.id), f"{name}.{node.target.id}: in the stub only"
        elif isinstance(node, ast.ClassDef):
            stub_names.add(node.name)
            cls = getattr(mod, node.name, None)
            assert isinstance(cls, type), f"{name}.{node.name}: in the stub only"
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                    assert hasattr(cls, item.name), f"{name}.{node.name}.{item.name}: stub only"
                    is_property = any(isinstance(d, ast.Name) and d.id == "property"
                                      for d in item.decorator_list)
                    if not is_property:
                        assert _stub_params(item) == _runtime_params(getattr(cls, item.name), cls), \
                            f"{name}.{node.name}.{item.name}: stub parameters differ"
            # what the class itself defines (an exception class inherits args, add_note, ...)
            missing = {k for k in vars(cls) if not k.startswith("_")} - members
            assert not missing, f"{name}.{node.name}: not in the stub: {sorted(missing)}"
    missing = _public(mod) - stub_names
    assert not missing, f"{name}: public names not in the stub: {sorted(missing)}"


def test_every_compiled_module_has_a_stub():
    compiled = {f.split(".")[0] for f in os.listdir(KERNELS_DIR)
                if f.endswith((".so", ".pyd")) and not f.startswith("__")}
    assert compiled, f"no compiled modules in {KERNELS_DIR}"
    assert compiled <= set(STUBBED), f"compiled modules without a stub: {sorted(compiled - set(STUBBED))}"


def test_py_typed_marker():
    assert os.path.isfile(os.path.join(os.path.dirname(fastnn.__file__), "py.typed"))
