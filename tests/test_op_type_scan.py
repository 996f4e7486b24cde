"""Op types are tested (`node.op_type == "Relu"`, `!=`) only where ops are described: the op catalog (the op
records), the pattern units (lrpgraph/patterns/) and the importer's op table; everywhere else code asks a
record (its kind or a flag) or a pattern unit. The scan reads the package's source with ast."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lrpgraph"
ALLOWED = ("catalog/", "converters/", "patterns/", "train/onnx_ops.py")
# (file, function) pairs still testing op types, to be removed once their rewrite is merged:
KNOWN_EXCEPTIONS = {
    ("canonicalize.py", "_linear"),  # bias Add and BatchNormalization folding: becomes the linear op units
}


def _is_op_type(node):
    """node reads an op type: `x.op_type` or `getattr(x, "op_type", ...)`."""
    if isinstance(node, ast.Attribute):
        return node.attr == "op_type"
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2 \
        and isinstance(node.args[1], ast.Constant) and node.args[1].value == "op_type"


def _is_string(node):
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def op_type_tests(tree):
    """(line, enclosing function or '', op name) of each `==` / `!=` comparison of an op type with a string."""
    found = []

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not function:
            function = node.name
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, sides, sides[1:]):
                if isinstance(op, (ast.Eq, ast.NotEq)):
                    for a, b in ((left, right), (right, left)):
                        if _is_op_type(a) and _is_string(b):
                            found.append((node.lineno, function, b.value))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "")
    return found


def test_the_scan_finds_op_type_tests():
    assert op_type_tests(ast.parse('if node.op_type == "Relu": pass')) == [(1, "", "Relu")]
    assert op_type_tests(ast.parse('def f(n):\n    return "Sub" != n.op_type'))[0][1:] == ("f", "Sub")
    assert op_type_tests(ast.parse('ok = getattr(p.get(t), "op_type", "") == "Flatten"'))
    assert op_type_tests(ast.parse('ok = 0 < a.b.op_type == "Div"'))
    assert not op_type_tests(ast.parse('b.op("Conv", [x, w])\nok = node.op_type in OPS\nok = kind == "linear"'))


def test_no_op_type_tests_outside_the_catalog_and_the_pattern_units():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if any(rel == place or rel.startswith(place) for place in ALLOWED):
            continue
        for line, function, op in op_type_tests(ast.parse(path.read_text(), str(path))):
            if (rel, function) not in KNOWN_EXCEPTIONS:
                offenders.append(f"lrpgraph/{rel}:{line} ({function or 'module'}): op_type tested against '{op}'")
    assert not offenders, ("op types tested outside the op records and lrpgraph/patterns/ (ask the record's kind "
                           "or a flag, or write a pattern unit):\n" + "\n".join(offenders))
