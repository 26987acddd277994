"""The roles stay apart in code (docs/adr/0013-roles-and-layering.md).

Every ``import`` of every module is read with ``ast`` (module level and inside functions,
relative imports resolved) together with dotted ``bitnet_edge.*`` string literals (what
``importlib.import_module`` / ``__import__`` / a ``"module:Class"`` registry would load), and
checked against the rules:

- ``agent/`` imports nothing from ``packagers`` or ``fleet``;
- ``sdk/`` (the CLI root ``sdk/_root`` aside) imports nothing from ``packagers``, ``agent`` or ``fleet``;
- ``fleet/`` imports nothing from ``agent``;
- what ``setup.py`` loads before any dependency is installed (``packagers/targets.py`` and what it
  imports) is standard library only.

Then a fresh interpreter imports the device's modules and must not have loaded any builder or fleet
module, nor the builder's and fleet's heavy dependencies.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
_SETUP = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
#: source folder -> package name, longest folder first (sdk/native before sdk)
PACKAGE_OF = sorted(((REPO / d, p) for p, d in _SETUP["package-dir"].items()), key=lambda x: -len(str(x[0])))
_DOTTED = re.compile(r"^bitnet_edge(\.[A-Za-z_]\w*)+(:[A-Za-z_]\w*)?$")

#: (source folder, folders exempt, forbidden package prefixes)
RULES = [
    ("agent", (), ("bitnet_edge.packagers", "bitnet_edge.fleet")),
    ("sdk", ("sdk/_root",), ("bitnet_edge.packagers", "bitnet_edge.agent", "bitnet_edge.fleet")),
    ("fleet", (), ("bitnet_edge.agent",)),
]

#: what setup.py imports from the source tree to build the host library (no dependency installed yet)
SETUP_TIME = ["packagers/targets.py"]

#: modules the device must never load
DEVICE_FORBIDDEN = ("bitnet_edge.packagers", "bitnet_edge.fleet", "gguf", "flatbuffers", "amqtt", "onnx", "torch")


def module_name(path: Path) -> str:
    for folder, pkg in PACKAGE_OF:
        if path.is_relative_to(folder):
            rel = path.relative_to(folder).with_suffix("")
            parts = [] if rel.name == "__init__" and len(rel.parts) == 1 else list(rel.parts)
            if parts and parts[-1] == "__init__":
                parts.pop()
            return ".".join([pkg, *parts])
    raise AssertionError(f"{path} is in no package of pyproject.toml")


def imports(path: Path, me: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path`` (module ``me``), plus dotted bitnet_edge string
    literals; ``from M import n`` gives both ``M`` and ``M.n`` (``n`` may be a submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    me = me or module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found += [(node.lineno, f"{mod}.{a.name}") for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.match(node.value):
            found.append((node.lineno, node.value.partition(":")[0]))
    return found


def python_files(folder: str, exempt=()) -> list[Path]:
    out = []
    for p in sorted((REPO / folder).rglob("*.py")):
        rel = p.relative_to(REPO).as_posix()
        if any(rel.startswith(e + "/") for e in exempt) or "/_lib/" in rel:
            continue
        out.append(p)
    return out


def _hits(mod: str, prefixes) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("folder,exempt,forbidden", RULES, ids=[r[0] for r in RULES])
def test_no_import_crosses_a_role(folder, exempt, forbidden):
    files = python_files(folder, exempt)
    assert len(files) > 5, f"no sources found under {folder}/"
    bad = [f"{p.relative_to(REPO)}:{line}: {mod}" for p in files for line, mod in imports(p) if _hits(mod, forbidden)]
    assert not bad, f"{folder}/ must not import {', '.join(forbidden)}:\n" + "\n".join(bad)


def test_what_setup_py_loads_is_standard_library_only():
    todo, seen, bad = [REPO / f for f in SETUP_TIME], set(), []
    sources = {module_name(p): p for d in ("sdk", "packagers") for p in python_files(d)}
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        for line, mod in imports(p):
            top = mod.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if mod in sources and sources[mod].name != "__init__.py":  # ours: standard library only too
                todo.append(sources[mod])
            elif mod in sources or mod.rpartition(".")[0] in sources:
                continue  # a package (setup.py stands in for its __init__) or a name from one of ours
            else:
                bad.append(f"{p.relative_to(REPO)}:{line}: {mod}")
    assert len(seen) >= 3, seen
    assert not bad, "setup.py loads these before any dependency is installed:\n" + "\n".join(bad)


def test_the_checker_sees_function_level_relative_and_dynamic_imports(tmp_path):
    """The rules cannot pass vacuously: each spelling of an import is found."""
    src = tmp_path / "probe.py"
    src.write_text("from __future__ import annotations\n"
                   "import importlib\n"
                   "def f():\n"
                   "    from bitnet_edge.packagers.builder import package_model\n"
                   "    from ..fleet import client\n"
                   "    svc = importlib.import_module('bitnet_edge.fleet.service')\n"
                   "    return svc, 'bitnet_edge.packagers.cli:main'\n")
    mods = [m for _, m in imports(src, "bitnet_edge.agent.probe_module")]
    assert "bitnet_edge.packagers.builder" in mods and "bitnet_edge.fleet.client" in mods
    assert "bitnet_edge.fleet.service" in mods and "bitnet_edge.packagers.cli" in mods


def test_the_device_loads_no_builder_or_fleet_code():
    code = ("import sys, json\n"
            "import bitnet_edge.agent.daemon, bitnet_edge.agent.worker, bitnet_edge.agent.sync, "
            "bitnet_edge.agent.server, bitnet_edge.agent.cli\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout)
    assert "bitnet_edge.agent.daemon" in loaded and "bitnet_edge.agent.worker" in loaded
    bad = [m for m in loaded if _hits(m, DEVICE_FORBIDDEN)]
    assert not bad, f"importing the agent loads {bad}"


def test_moved_names_are_imported_from_their_new_home():
    """``from bitnet_edge.packagers.M import n`` only for names M defines for export (``__all__``):
    what moved to sdk.bundle / sdk.native / sdk.wire is not re-exported by packagers."""
    import importlib

    bad = []
    for folder in ("agent", "sdk", "fleet", "packagers", "devices", "tests", "benchmarks"):
        for p in sorted((REPO / folder).rglob("*.py")):
            if "/_lib/" in p.as_posix():
                continue
            for node in ast.walk(ast.parse(p.read_text(), str(p))):
                if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bitnet_edge.packagers.")):
                    continue
                mod = importlib.import_module(node.module)
                exported = set(getattr(mod, "__all__", ()))
                bad += [f"{p.relative_to(REPO)}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                        if a.name not in exported and not a.name.startswith("_")]
    assert not bad, "not exported there (moved?):\n" + "\n".join(bad)
