"""The patent notice stands where users look: README (the package's long description), `lrpgraph --help`'s
epilog, and the footer of every page lrpgraph writes (explain's page, the token page, the web site)."""

import html
from pathlib import Path

from click.testing import CliRunner

from lrpgraph.cli import main
from lrpgraph.notice import PATENT_FOOTER, PATENT_NOTICE
from lrpgraph.runtime.page import write_index_html
from lrpgraph.runtime.tokens import token_page

ROOT = Path(__file__).resolve().parent.parent
FAMILY = ("WO 2016/150472", "Fraunhofer-Gesellschaft", "TU Berlin")


def flat(text):
    return " ".join(text.split())


def test_the_notice_names_the_patent_family():
    for name in FAMILY + ("US 12,061,966 B2", "EP 3271863 B1", "CA 2979579"):
        assert name in PATENT_NOTICE
    for name in FAMILY:
        assert name in PATENT_FOOTER


def test_readme_carries_the_notice_next_to_the_licence():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Licence and patents" in readme
    section = readme.split("## Licence and patents", 1)[1].split("\n## ", 1)[0]
    assert flat(PATENT_NOTICE) in flat(section)
    assert "MIT" in section and "personal and scientific purposes" in section
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'readme = "README.md"' in pyproject  # the package's long description is the README


def test_help_epilog_carries_the_notice():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert flat(PATENT_NOTICE) in flat(result.output)


def test_every_page_ends_with_the_footer(tmp_path):
    footer = html.escape(PATENT_FOOTER)
    path = write_index_html(tmp_path, [{"file": "a.png", "predicted": 1, "outputs": {}}])
    assert footer in Path(path).read_text(encoding="utf-8")
    tokens = token_page([{"file": "ids.npy", "row": 0, "class": 1, "tokens": ["a"], "relevance": [1.0],
                          "mask": [1]}])
    assert footer in tokens
    site = (ROOT / "lrpgraph" / "web" / "index.html").read_text(encoding="utf-8")
    assert footer in site
