"""The package's layout rules, read from its source (ast): op types are listed only by the op records in
lrpgraph/converters/ and by the importer's op table (lrpgraph/train/onnx_ops.py); no import cycle among
lrpgraph's modules; every package file under 400 lines."""

import ast
from pathlib import Path

import onnx.defs

PACKAGE = Path(__file__).resolve().parent.parent / "lrpgraph"
OP_TABLES = {"converters", "train/onnx_ops.py"}  # the only places that may list op types
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
    assert not offenders, ("op types listed outside lrpgraph/converters/ (describe them in the op records "
                           "instead):\n" + "\n".join(offenders))


def run_time_imports(tree):
    """The Import and ImportFrom nodes that can run: everything but the body of `if TYPE_CHECKING:` (imports
    for annotations only, which never execute and so cannot close an import cycle)."""
    for node in ast.iter_child_nodes(tree):
        test = getattr(node, "test", None) if isinstance(node, ast.If) else None
        if test is not None and (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in run_time_imports(ast.Module([child], [])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from run_time_imports(node)


def test_the_import_scan_skips_type_checking_blocks():
    tree = ast.parse("import typing\nif typing.TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
                     "if TYPE_CHECKING:\n    from c import d\ndef f():\n    import e\n")
    assert sorted(a.name for n in run_time_imports(tree) if isinstance(n, ast.Import) for a in n.names) == \
        ["b", "e", "typing"]


def imports_of(path, modules):
    """The lrpgraph modules a file imports at run time (module-level or inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in run_time_imports(ast.parse(path.read_text(), str(path))):
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


def test_no_import_cycle_among_the_package_modules():
    files = package_files()
    modules = {module_name(p) for p in files}
    graph = {module_name(p): imports_of(p, modules) for p in files}
    assert graph["lrpgraph.canonicalize"], "the import scan found nothing: it is broken"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_package_file_is_under_400_lines():
    long = [f"{p.relative_to(PACKAGE.parent)}: {n} lines" for p in package_files()
            if (n := len(p.read_text().splitlines())) >= 400]
    assert not long, "\n".join(long)
