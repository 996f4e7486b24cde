"""The package's layout rules, read from its source (ast): op types are listed only by the op catalog
(lrpgraph/catalog/), the converters (lrpgraph/converters/) and the importer's op table
(lrpgraph/train/onnx_ops.py); no import cycle among lrpgraph's modules, imports for annotations included; the
catalog and the analysis code import no converter; op types compared (`op_type ==`) only in the catalog and the
pattern units; every package file under 400 lines and every function under 60."""

import ast
from pathlib import Path

import onnx.defs

PACKAGE = Path(__file__).resolve().parent.parent / "lrpgraph"
OP_TABLES = {"catalog", "converters", "train/onnx_ops.py"}  # the only places that may list op types
ONNX_OPS = {schema.name for schema in onnx.defs.get_all_schemas_with_history()}


def package_files():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} files under {PACKAGE}"
    return files


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def in_op_table(path):
    rel = path.relative_to(PACKAGE).as_posix()
    return any(rel == table or rel.startswith(table + "/") for table in OP_TABLES)


def op_names_in(node):
    """The ONNX op type names among a literal collection's string elements (dict: its keys)."""
    elements = node.keys if isinstance(node, ast.Dict) else node.elts
    return [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)
            and e.value in ONNX_OPS]


def op_lists(tree):
    """(line, names) of every literal set/list/tuple/dict naming two or more op types, or one op type
    tested with `in` / `not in` (a membership test against a list of ops)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Set, ast.List, ast.Tuple, ast.Dict)) and len(op_names_in(node)) >= 2:
            found.append((node.lineno, op_names_in(node)))
        elif isinstance(node, ast.Compare) and any(isinstance(o, (ast.In, ast.NotIn)) for o in node.ops):
            for right in node.comparators:
                if isinstance(right, (ast.Set, ast.List, ast.Tuple, ast.Dict)) and op_names_in(right):
                    found.append((node.lineno, op_names_in(right)))
    return found


def test_the_scan_finds_op_lists():
    """The detector itself: it finds the forms the package used to hold, and passes plain code."""
    assert op_lists(ast.parse('POSITIVE = {"Relu", "Sigmoid"}'))
    assert op_lists(ast.parse('if node.op_type in ("Softmax",): pass'))
    assert op_lists(ast.parse('x = ["Conv", "Gemm", "MatMul"]'))
    assert not op_lists(ast.parse('b.op("Conv", [x, w], "conv")\nmodes = ("top", "index")'))


def test_no_op_type_lists_outside_the_op_records():
    offenders = []
    for path in package_files():
        if in_op_table(path):
            continue
        for line, names in op_lists(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {', '.join(names)}")
    assert not offenders, ("op types listed outside lrpgraph/catalog/ and lrpgraph/converters/ (describe them in "
                           "the op records instead):\n" + "\n".join(offenders))


def all_imports(tree):
    """Every Import and ImportFrom node, those under `if TYPE_CHECKING:` included: an import for annotations
    still ties the two modules together (the hints must resolve, tests/test_lint.py), so it counts."""
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_the_import_scan_counts_type_checking_blocks():
    tree = ast.parse("import typing\nif typing.TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
                     "if TYPE_CHECKING:\n    from c import d\ndef f():\n    import e\n")
    assert sorted(a.name for n in all_imports(tree) if isinstance(n, ast.Import) for a in n.names) == \
        ["a", "b", "e", "typing"]
    assert [n.module for n in all_imports(tree) if isinstance(n, ast.ImportFrom)] == ["c"]


def imports_of(path, modules):
    """The lrpgraph modules a file imports (module-level, inside functions, or for annotations only)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in all_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    out.add(target)
                elif base in modules:
                    out.add(base)
    out.discard(name)
    return out


def import_graph():
    """{module: the lrpgraph modules it imports} for every module of the package."""
    files = package_files()
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search with colours)."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for nxt in sorted(graph[module]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


# imports known to close a cycle, being removed elsewhere (empty this once they are): runtime/tokens.py names
# the session class in its annotations and calls its private target feeds; the session's rework, in which
# tokens only supply feeds, drops the import
KNOWN_CYCLE_IMPORTS = {("lrpgraph.runtime.tokens", "lrpgraph.runtime.session")}


def test_no_import_cycle_among_the_package_modules():
    graph = import_graph()
    assert graph["lrpgraph.canonicalize"], "the import scan found nothing: it is broken"
    assert all(b in graph[a] for a, b in KNOWN_CYCLE_IMPORTS), "drop the imports gone from KNOWN_CYCLE_IMPORTS"
    for a, b in KNOWN_CYCLE_IMPORTS:
        graph[a] = graph[a] - {b}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def reached_from(graph, module):
    """Every module `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


# the code that reads a model without emitting relevance: it asks the op catalog, never a converter
ANALYSIS = ("lrpgraph.canonicalize", "lrpgraph.bounds", "lrpgraph.metrics", "lrpgraph.web", "lrpgraph.composites",
            "lrpgraph.methods.gradient", "lrpgraph.patterns.fusions", "lrpgraph.patterns.ends", "lrpgraph.rules",
            "lrpgraph.rules.composites")


def test_the_catalog_and_the_analysis_code_import_no_converter():
    graph = import_graph()
    readers = [m for m in graph if m == "lrpgraph.catalog" or m.startswith("lrpgraph.catalog.")] + list(ANALYSIS)
    assert len(readers) > len(ANALYSIS) + 3, "the catalog package is missing"
    found = {m: sorted(c for c in reached_from(graph, m) if c.startswith("lrpgraph.converters")) for m in readers}
    assert not any(found.values()), "converters imported by the catalog or analysis code:\n" + "\n".join(
        f"{m} -> {', '.join(converters)}" for m, converters in found.items() if converters)


def test_every_package_file_is_under_400_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in package_files()
            if (n := len(p.read_text().splitlines())) >= 400]
    assert not long, "\n".join(long)


def long_functions(tree, limit=60):
    """[(name, lines)] of the functions and methods (nested ones too) longer than limit lines, from the `def`
    line to the last line of the body (docstring included, decorators not)."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit]


def test_the_length_scan_measures_whole_functions():
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    assert long_functions(ast.parse(f"def f():\n{body}\n")) == [("f", 61)]
    nested = "\n".join(f"        x{i} = {i}" for i in range(60))
    assert long_functions(ast.parse(f"class A:\n    @staticmethod\n    def g():\n{nested}\n")) == [("g", 61)]
    assert not long_functions(ast.parse(f"def h():\n{body[: body.rindex(chr(10))]}\n"))


def test_no_function_over_60_lines():
    long = [f"{path.relative_to(PACKAGE.parent).as_posix()}: {name} has {lines} lines" for path in package_files()
            for name, lines in long_functions(ast.parse(path.read_text(), str(path)))]
    assert not long, "functions over 60 lines (split them):\n" + "\n".join(long)


# ------------------------------------------------------------------------------------------------ op_type tests
# Op types are tested (`node.op_type == "Relu"`, `!=`) only where ops are described: the op catalog, the pattern
# units (lrpgraph/patterns/) and the importer's op table; everywhere else code asks a record or a pattern unit.
OP_TYPE_TESTS_ALLOWED = ("catalog/", "patterns/", "train/onnx_ops.py")


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
    for path in package_files():
        rel = path.relative_to(PACKAGE).as_posix()
        if any(rel == place or rel.startswith(place) for place in OP_TYPE_TESTS_ALLOWED):
            continue
        for line, function, op in op_type_tests(ast.parse(path.read_text(), str(path))):
            offenders.append(f"lrpgraph/{rel}:{line} ({function or 'module'}): op_type tested against '{op}'")
    assert not offenders, ("op types tested outside the op records and lrpgraph/patterns/ (ask the record's kind "
                           "or a flag, or write a pattern unit):\n" + "\n".join(offenders))
