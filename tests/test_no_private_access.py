"""No module reaches into another package's private names (issue 15: "no private reach-ins").

The project's three packages are ``qrag_gym`` (folder ``qrag_gym/``), ``qrag_agents`` (``agents/``) and
``qrag_benchmarks`` (``benchmarks/``). A *private name* starts with one underscore and is not a dunder
(``_source``, ``__mangled``; not ``__init__``). The rule, checked with :mod:`ast` on every module of the
three packages:

(a) **Imports.** A module may not import a private name, or a module path with a private part, from a
    package other than its own: ``from qrag_gym.envs.babilong import _SOURCE_CACHE`` in ``qrag_agents``
    fails; the same line inside ``qrag_gym`` passes. Third-party packages count as "another package".
(b) **Attribute reads.** ``obj._name`` (and ``getattr``/``hasattr``/``setattr`` with the constant
    ``"_name"``) on anything but ``self`` or ``cls`` is allowed only when the module's own package
    *defines* ``_name``: assigns ``self._name``/``cls._name``, binds ``_name`` in a class body or at
    module level, or defines a function ``_name``. Types are unknown to ``ast``, so "the package that
    defines them" is approximated by "a package that defines an attribute of that name": ``env._source``
    in ``qrag_agents`` fails because only ``qrag_gym`` defines ``_source``, while ``super()._info()``
    or ``other._mask`` inside ``qrag_gym`` pass. Private attributes of third-party objects fail too.

Tests are not checked: they may inspect internals of the code they test.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"qrag_gym": ROOT / "qrag_gym", "qrag_agents": ROOT / "agents", "qrag_benchmarks": ROOT / "benchmarks"}
"""Top-level import name -> source folder (``pyproject.toml``'s ``package-dir``)."""
SELF_NAMES = frozenset({"self", "cls"})
ATTRIBUTE_FUNCTIONS = frozenset({"getattr", "hasattr", "setattr", "delattr"})


def is_private(name: str) -> bool:
    """``_x`` or ``__x``, but not a dunder such as ``__init__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__") and len(name) > 4)


@dataclass(frozen=True)
class Module:
    package: str
    """Top-level import name of the package holding the module."""
    dotted: str
    """The module's own import path (``qrag_agents.qrag.train``)."""
    path: str
    tree: ast.Module
    is_package: bool


def module_of(package: str, folder: Path, file: Path) -> Module:
    """Parse ``file`` of ``package`` (whose source lives in ``folder``)."""
    parts = file.relative_to(folder).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    dotted = ".".join((package, *(parts[:-1] if is_package else parts)))
    return Module(package, dotted, str(file.relative_to(ROOT)), ast.parse(file.read_text(), str(file)), is_package)


def project_modules() -> list[Module]:
    return [module_of(package, folder, file) for package, folder in PACKAGES.items()
            for file in sorted(folder.rglob("*.py"))]


def defined_private_names(modules: list[Module]) -> set[str]:
    """Private attribute names that ``modules`` define (see rule (b))."""
    names: set[str] = set()
    for module in modules:
        for node in ast.walk(module.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and is_private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and is_private(node.attr) \
                    and isinstance(node.value, ast.Name) and node.value.id in SELF_NAMES:
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and is_private(node.id):
                names.add(node.id)
    return names


def imported_from(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module path of ``from ... import`` (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.dotted.split(".")
    base = base[: len(base) - node.level + (1 if module.is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def violations(module: Module, own_private: set[str]) -> list[str]:
    """Every breach of rules (a) and (b) in ``module``, as ``path:line: what``."""
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{module.path}:{node.lineno}: {what}")

    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom):
            source = imported_from(module, node)
            if source.split(".")[0] == module.package:
                continue
            if any(is_private(part) for part in source.split(".")[1:]):
                report(node, f"imports from private module {source}")
            for alias in node.names:
                if is_private(alias.name):
                    report(node, f"imports private name {alias.name} from {source}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] != module.package and any(is_private(part) for part in parts[1:]):
                    report(node, f"imports private module {alias.name}")
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in SELF_NAMES) and node.attr not in own_private:
                report(node, f"reads {ast.unparse(node)}: {node.attr} is not defined in {module.package}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_FUNCTIONS \
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str) and is_private(node.args[1].value):
            owner, name = node.args[0], node.args[1].value
            if not (isinstance(owner, ast.Name) and owner.id in SELF_NAMES) and name not in own_private:
                report(node, f"{node.func.id}(..., {name!r}): {name} is not defined in {module.package}")
    return found


def all_violations(modules: list[Module]) -> list[str]:
    defined = {package: defined_private_names([m for m in modules if m.package == package]) for package in PACKAGES}
    return [line for module in modules for line in violations(module, defined[module.package])]


def test_no_module_reaches_into_another_packages_private_names() -> None:
    modules = project_modules()
    assert {m.package for m in modules} == set(PACKAGES) and len(modules) > 40  # the walk found the code
    assert all_violations(modules) == []


def _with_snippet(package: str, dotted: str, code: str) -> list[str]:
    """The violations of the project with one extra module ``dotted`` of ``package`` holding ``code``."""
    extra = Module(package, dotted, f"<{dotted}>", ast.parse(code), is_package=False)
    return [line for line in all_violations([*project_modules(), extra]) if line.startswith(f"<{dotted}>")]


@pytest.mark.parametrize("code, what", [
    ("def prefetch(env):\n    return env._source\n", "reads env._source"),
    ("def prefetch(env):\n    return getattr(env, '_source')\n", "getattr(..., '_source')"),
    ("from qrag_gym.envs.babilong import _SOURCE_CACHE\n", "imports private name _SOURCE_CACHE"),
    ("from qrag_gym.envs import _hidden\n", "imports private name _hidden"),
    ("import numpy._core\n", "imports private module numpy._core"),
    ("import sys\nframe = sys._getframe()\n", "reads sys._getframe"),
])
def test_the_rule_catches_reach_ins(code: str, what: str) -> None:
    """Re-introducing ``env._source`` in an agent module (what ``train.py`` did) fails the check."""
    found = _with_snippet("qrag_agents", "qrag_agents.qrag.reach_in", code)
    assert len(found) == 1 and what in found[0], found


def test_the_rule_allows_a_packages_own_private_names() -> None:
    code = ("from qrag_gym.envs.babilong import _SOURCE_CACHE\n"
            "from ._private_helper import thing\n"
            "class A:\n    def __init__(self):\n        self._x = 1\n"
            "    def same(self, other):\n        return other._x + self._y + getattr(other, '_x')\n"
            "def mask(env):\n    return env._mask\n")
    assert _with_snippet("qrag_gym", "qrag_gym.inside", code) == []
