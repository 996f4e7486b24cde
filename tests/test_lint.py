"""The repository stays pyflakes-clean (no undefined names, unused imports or dead locals in lrpgraph, benchmarks,
tests and examples), and the string annotations pyflakes checks by name really resolve: each module's
`if TYPE_CHECKING:` imports run and every function's hints evaluate against them (typing.get_type_hints)."""

import ast
import importlib
import inspect
import io
import typing
from pathlib import Path

from pyflakes.api import check, checkRecursive
from pyflakes.reporter import Reporter

ROOT = Path(__file__).resolve().parent.parent
LINTED = ("lrpgraph", "benchmarks", "tests", "examples")
NOT_IMPORTED = {"lrpgraph.train.__main__"}  # runs the training CLI on import


def pyflakes_report(paths: list) -> str:
    out = io.StringIO()
    checkRecursive([str(p) for p in paths], Reporter(out, out))
    return out.getvalue()


def test_pyflakes_reports_what_it_should():
    out = io.StringIO()
    check("import os\n\ndef f() -> 'Missing':\n    unused = 1\n", "snippet.py", Reporter(out, out))
    report = out.getvalue()
    assert "'os' imported but unused" in report
    assert "undefined name 'Missing'" in report
    assert "local variable 'unused' is assigned to but never used" in report


def test_repository_is_pyflakes_clean():
    report = pyflakes_report([ROOT / name for name in LINTED])
    assert report == "", f"pyflakes {' '.join(LINTED)}:\n{report}"


def _module_name(path: Path, root: Path = ROOT) -> str:
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    return name.removesuffix(".__init__")


def unresolved_hints(path: Path, root: Path = ROOT) -> list:
    """['module.function: error'] for each function of the module whose annotations do not evaluate once the
    module's `if TYPE_CHECKING:` imports have run (or for a TYPE_CHECKING import that fails)."""
    name = _module_name(path, root)
    module = importlib.import_module(name)
    namespace = dict(vars(module))
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            try:
                exec(compile(ast.Module(node.body, []), str(path), "exec"), namespace)
            except ImportError as error:
                return [f"{name}: TYPE_CHECKING import fails: {error!r}"]
    found = []
    for value in list(vars(module).values()):
        members = [value, *vars(value).values()] if inspect.isclass(value) else [value]
        for member in members:
            function = getattr(member, "__func__", member)
            if inspect.isfunction(function) and function.__module__ == name:
                try:
                    typing.get_type_hints(function, globalns=namespace)
                except Exception as error:  # NameError, AttributeError, TypeError from a bad annotation
                    found.append(f"{name}.{function.__qualname__}: {error!r}")
    return found


def test_unresolved_hint_is_found(tmp_path, monkeypatch):
    (tmp_path / "lint_probe.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from os import PathLike\n\n\n"
        "def good(p: 'PathLike') -> int: ...\n\n\ndef bad(p: 'Nowhere') -> int: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = unresolved_hints(tmp_path / "lint_probe.py", root=tmp_path)
    assert len(found) == 1 and found[0].startswith("lint_probe.bad: NameError"), found


def test_every_annotation_of_the_package_resolves():
    paths = [p for p in sorted((ROOT / "lrpgraph").rglob("*.py")) if _module_name(p) not in NOT_IMPORTED]
    missing = [line for path in paths for line in unresolved_hints(path)]
    assert not missing, "\n".join(missing)
