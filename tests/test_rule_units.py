"""Rules and composites are units (lrpgraph/rules/): the converters look a rule's emitter up instead of
branching on its name, the rule parameter table of docs/rules.md is the one the units write, and the tables
derived from the units (accepted rules per kind, options each composite reads, composite names) say what
the hand-written tables before them said."""

import ast
from pathlib import Path

from lrpgraph import cli, cli_checks
from lrpgraph.converters import RECORDS
from lrpgraph.rules import MOVE, RULES, accepted, default_rules, with_parameter_table
from lrpgraph.rules.composites import COMPOSITES

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lrpgraph"
RULE_UNITS = PACKAGE / "rules"


def _is_rule_name(node):
    """`rule.name`, `self.rule.name`, `unit_rule.name`: the name of a rule."""
    if not (isinstance(node, ast.Attribute) and node.attr == "name"):
        return False
    owner = node.value
    return "rule" in (owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")).lower()


def _names_rules(node):
    """A string, a literal collection, a sum of them, or a module constant (GRADIENT_RULES): names of rules."""
    if isinstance(node, (ast.Constant, ast.Tuple, ast.List, ast.Set, ast.BinOp)):
        return True
    name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
    return name.isupper()


def rule_branches(tree):
    """Lines that compare a rule's name with rule names (== "pass", in ("wta", "pass"), in GRADIENT_RULES);
    asking a record whether it accepts a rule (`rule.name in allowed`) is not a branch on the rule."""
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and any(map(_is_rule_name, [node.left] + node.comparators))
            and any(map(_names_rules, [node.left] + node.comparators))]


def test_the_scan_finds_rule_branches():
    for code in ('if rule.name == "pass": pass', 'x = rule.name in GRADIENT_RULES + ("pass",)',
                 'if rule.name not in ("wta", "pass"): pass', 'if self.rule.name != "cp": pass'):
        assert rule_branches(ast.parse(code)), code
    for code in ("if rule.name not in allowed: pass", "x = [i for i in g.input if i.name == image]",
                 'if node.name == "conv": pass'):
        assert not rule_branches(ast.parse(code)), code


def test_no_rule_name_branches_outside_the_rule_units():
    offenders = [f"{path.relative_to(ROOT)}:{line}" for path in sorted(PACKAGE.rglob("*.py"))
                 if RULE_UNITS not in path.parents for line in rule_branches(ast.parse(path.read_text()))]
    assert not offenders, ("branches on a rule's name outside lrpgraph/rules/ (give the rule an emitter for the "
                           "kind instead, the op's primitives as `op`):\n" + "\n".join(offenders))


def test_docs_parameter_table_is_the_units():
    page = ROOT / "docs" / "rules.md"
    text = page.read_text()
    assert text == with_parameter_table(text), \
        "docs/rules.md's rule parameter table is out of date: run `python -m lrpgraph.rules docs/rules.md`"


def test_every_rule_an_op_accepts_has_an_emitter_for_its_kind():
    missing = []
    for record in RECORDS.values():
        for kind in set(record.kinds) - {"shape", "head"}:
            for name in accepted(record, kind):
                if kind not in RULES[name].emitters:
                    missing.append(f"{record.op_type} ({kind}): {name}")
    assert not missing, "\n".join(missing)
    assert all(RULES[name].emitters.get("structure") == MOVE for name in default_rules("structure"))


def test_default_rules_per_kind_are_zennits():
    """The rules each kind accepts, as zennit's composites allow them for such a layer."""
    linear = {"epsilon", "zplus", "alpha-beta", "gamma", "zbox", "flat", "wsquare", "gradient", "flex-zbox"}
    moves = {"pass", "gradient"}
    expected = {"linear": linear, "activation": {"pass", "gradient", "guided", "identity"}, "bn": moves,
                "normaliser": set(), "sum": {"norm", "pass", "gradient"}, "affine": moves, "gate": moves,
                "product": set(), "maxpool": {"wta", "gradient", "guided"}, "avgpool": {"norm", "gradient"},
                "structure": moves, "shape": set(), "head": set()}
    assert {kind: set(default_rules(kind)) for kind in expected} == expected


def test_composite_tables_give_the_names_and_option_users():
    lrp = {"epsilon", "epsilon-plus", "epsilon-plus-flat", "zplus", "epsilon-gamma-box", "epsilon-alpha2-beta1",
           "epsilon-alpha2-beta1-flat"}
    assert cli.COMPOSITE_NAMES == list(COMPOSITES) == sorted(lrp, key=list(COMPOSITES).index) + \
        ["flex", "attn-lrp", "cp-lrp"]
    alpha_beta = {"epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat"}
    assert cli_checks.RULE_OPTION_USERS == {
        "epsilon": lrp - {"zplus"}, "stabilizer": lrp, "gamma": {"epsilon-gamma-box"}, "alpha": alpha_beta,
        "beta": alpha_beta, "low": {"epsilon-gamma-box"}, "high": {"epsilon-gamma-box"}, "flex_epsilon": {"flex"},
        "rules": lrp | {"flex"}}


def run_time_imports(tree):
    """The Import and ImportFrom nodes that run at import: all but those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        test = getattr(node, "test", None) if isinstance(node, ast.If) else None
        if test is not None and (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING":
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def test_the_rule_and_composite_units_import_neither_onnx_nor_the_converters():
    """The CLI reads the composite names and option flags from them without loading the converter."""
    heavy = ("onnx", "onnxruntime", "torch", "lrpgraph.converters", "lrpgraph.canonicalize", "lrpgraph.graph",
             "lrpgraph.convert")
    found = []
    for path in sorted(RULE_UNITS.glob("*.py")) + [PACKAGE / "cli_rules.py"]:
        for node in run_time_imports(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{path.name}: {n}" for n in names if n.startswith(heavy)]
    assert not found, found
