"""python -m lrpgraph.rules PAGE: rewrite the rule parameter table of PAGE (docs/rules.md) from the rule units."""

import sys
from pathlib import Path

from lrpgraph.rules.base import with_parameter_table

if __name__ == "__main__":
    for page in sys.argv[1:] or ["docs/rules.md"]:
        path = Path(page)
        path.write_text(with_parameter_table(path.read_text()))
