"""The rule plan of the gradient-family methods: the plain gradient through every unit, as its op record
says (MaxPool's gradient is the arg-max, 'wta'); guided methods let only positive gradients through the
ops whose records say guided."""

from lrpgraph.catalog import RECORDS
from lrpgraph.rules import make_rule


def gradient_plan(units: list, guided: bool = False) -> dict:
    """{unit name: Rule}: each op record's gradient rule (the plain gradient; MaxPool's arg-max); with
    guided, only positive gradients pass the ops whose records say guided: the ReLU-like units and
    MaxPool (Kwon, Koo, Cho 2020)."""
    plan = {}
    for unit in units:
        record = RECORDS[unit.op]
        plan[unit.name] = make_rule("guided" if guided and record.guided else record.gradient_rule)
    return plan
