"""LRP rules, one unit each (base.RuleUnit): the linear rules as data (linear.py, turned into nodes by
terms.linear_relevance), the other rules of a CNN (basic.py) and of the transformer composites
(transformer.py); the composites' options (options.py) and the composites themselves (composites.py).
Importing the package registers every rule; it imports neither onnx nor the converters.

Adding a rule = one RuleUnit registered in one module (register_rule, or linear_rule for a linear one)."""

from lrpgraph.rules import linear  # first: the linear rules lead the listings
from lrpgraph.rules import basic, transformer
from lrpgraph.rules.base import (DEFAULT_STABILIZER, MOVE, RULES, Param, Rule, RuleUnit, accepted, check_rule, default_rules, listing,
                                 make_rule, parameter_table, parse_rule, register_rule, unregister_rule,
                                 unsupported_rule, with_parameter_table)
from lrpgraph.rules.basic import DEFAULT_FLEX_EPSILON
from lrpgraph.rules.linear import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_GAMMA, DEFAULT_HIGH, DEFAULT_LOW, linear_rule
from lrpgraph.rules.options import RuleOptions, check_rule_options

__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_BETA", "DEFAULT_FLEX_EPSILON", "DEFAULT_GAMMA", "DEFAULT_HIGH", "DEFAULT_LOW",
    "DEFAULT_STABILIZER", "MOVE", "RULES", "Param", "Rule", "RuleOptions", "RuleUnit", "check_rule_options",
    "accepted", "check_rule", "default_rules", "linear_rule", "listing", "make_rule", "parameter_table", "parse_rule", "register_rule",
    "unregister_rule", "unsupported_rule", "with_parameter_table",
    # the modules that register the rules
    "basic", "linear", "transformer",
]
