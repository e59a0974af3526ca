"""The import graph: layers point down only, and no module imports itself round a cycle.

    framing -> rpc -> image -> ncp, primary -> shells (dualmcu/*.py) -> dualmcu.cli

A module may import its own layer and the layers below it, never above.  ncp and primary share
a layer but never import each other: each side must run against a real peer on its own.  The
check reads every import statement, those inside functions too, so a lazy import cannot hide
an upward edge or a cycle.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys

import pytest

# The packages of each layer, lowest first.  The root package `dualmcu` holds the version
# only and may be imported from anywhere.
LAYERS = [
    ("framing", ["dualmcu.framing"]),
    ("rpc", ["dualmcu.rpc"]),
    ("image", ["dualmcu.image"]),
    ("sides", ["dualmcu.ncp", "dualmcu.primary"]),
    ("shells", ["dualmcu"]),  # the modules directly in dualmcu/: ports, relay, link, simulation, fuzzer
    ("cli", ["dualmcu.cli", "dualmcu.__main__"]),
]
PEERS_THAT_MUST_NOT_MEET = ("dualmcu.ncp", "dualmcu.primary")


def package_of(module: str) -> str:
    """The most specific package of LAYERS that ``module`` belongs to."""
    best = ""
    for _, packages in LAYERS:
        for p in packages:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best = p
    return best


def layer_of(module: str) -> int:
    p = package_of(module)
    return next(i for i, (_, packages) in enumerate(LAYERS) if p in packages)


def project_modules() -> dict[str, str]:
    """Every module of the installed project: name -> source file."""
    out: dict[str, str] = {}
    for _, packages in LAYERS:
        for p in packages:
            spec = importlib.util.find_spec(p)
            if spec is None:
                continue
            if spec.submodule_search_locations is None:  # a module, e.g. dualmcu.__main__
                out[p] = spec.origin
                continue
            (root,) = list(spec.submodule_search_locations)
            for dirpath, _, files in os.walk(root):
                rel = os.path.relpath(dirpath, root)
                if "__pycache__" in rel:
                    continue
                prefix = p if rel == "." else p + "." + rel.replace(os.sep, ".")
                for f in files:
                    if f.endswith(".py"):
                        name = prefix if f == "__init__.py" else f"{prefix}.{f[:-3]}"
                        out.setdefault(name, os.path.join(dirpath, f))
    return out


def imports_of(name: str, path: str, known: set[str]) -> set[str]:
    """The project modules that ``name`` imports, anywhere in its body."""
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when there is one.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


MODULES = project_modules()
GRAPH = {name: imports_of(name, path, set(MODULES)) for name, path in MODULES.items()}


def test_every_module_is_in_a_layer():
    assert len(MODULES) > 30
    for name in MODULES:
        assert package_of(name), name


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    here = layer_of(name)
    for dep in GRAPH[name]:
        if dep == "dualmcu":
            continue
        assert layer_of(dep) <= here, f"{name} ({LAYERS[here][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})"
        a, b = package_of(name), package_of(dep)
        if a in PEERS_THAT_MUST_NOT_MEET and b in PEERS_THAT_MUST_NOT_MEET:
            assert a == b, f"{name} imports {dep}: the two sides must not depend on each other"


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        path.append(n)
        for d in sorted(GRAPH[n]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[n] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for n in sorted(GRAPH):
        if n not in state:
            visit(n)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The check itself can fail: a framing module that imports the NCP is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dualmcu.ncp.core import NcpDevice\n")
    deps = imports_of("dualmcu.framing.bad", str(bad), set(MODULES))
    assert "dualmcu.ncp.core" in deps and layer_of("dualmcu.ncp.core") > layer_of("dualmcu.framing.bad")


def test_a_primary_that_trusts_no_key_does_not_load_cryptography():
    """7 MiB of RSS for nothing: the sides and the shells import it only when a key is used."""
    import subprocess

    code = ("import sys, dualmcu.sides, dualmcu.sim, dualmcu.primary.device, dualmcu.ncp.core; "
            "print(any(m == 'cryptography' or m.startswith('cryptography.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
