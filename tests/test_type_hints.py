"""Every public function of the package has type hints on its parameters and its return value (read from the
source with ast). The importer's op functions (registered in its op table with @op, called by op type with
ONNX's inputs and attributes) are exempt, as are the files listed in PENDING."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lrpgraph"
PENDING: set = set()


def registered_op(fn):
    return any(isinstance(d, ast.Call) and getattr(d.func, "id", None) == "torch_op" for d in fn.decorator_list)


def missing_hints(tree):
    """[(line, 'function: names')] of public functions and methods lacking parameter or return hints."""
    found = []

    def check(fn, prefix):
        if (fn.name.startswith("_") and fn.name not in ("__init__", "__call__")) or registered_op(fn):
            return
        args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
        bad = [a.arg for a in args if a.annotation is None and a.arg not in ("self", "cls")]
        if fn.returns is None and fn.name != "__init__":
            bad.append("return")
        if bad:
            found.append((fn.lineno, f"{prefix}{fn.name}: {', '.join(bad)}"))

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            check(node, "")
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    check(item, f"{node.name}.")
    return found


def test_the_scan_finds_missing_hints():
    assert missing_hints(ast.parse("def f(x, y: int) -> int: pass")) == [(1, "f: x")]
    assert missing_hints(ast.parse("class A:\n    def m(self, x: int): pass")) == [(2, "A.m: return")]
    assert not missing_hints(ast.parse("def _f(x): pass\n@torch_op('Relu')\ndef relu(ctx, x): pass"))


def test_every_public_function_has_type_hints():
    missing = [f"{path.relative_to(PACKAGE.parent)}:{line} {what}" for path in sorted(PACKAGE.rglob("*.py"))
               if path.relative_to(PACKAGE).as_posix() not in PENDING
               for line, what in missing_hints(ast.parse(path.read_text()))]
    assert not missing, "\n".join(missing)
