"""The repository documents itself: every Markdown file that README.md, docs/ or a docstring or comment in the code
names exists in the repository, and no reference leaves it (a path starting with ../)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["README.md", "docs", "lrpgraph", "tests", "benchmarks", "examples"]
MARKDOWN = re.compile(r"(?<![\w/.-])((?:\.\./)*[\w./-]*[\w-]+\.md)\b")


def tracked():
    """The repository's files (git's list: what a clone has)."""
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [Path(name) for name in out.split("\0") if name]


def texts():
    for rel in tracked():
        if rel.parts[0] in SOURCES and rel.suffix in (".py", ".md", ".js", ".html"):
            yield ROOT / rel, (ROOT / rel).read_text(encoding="utf-8")


def cited(text):
    """The documents a text cites: docs/*.md, an upper-case NAME.md, or anything outside the repository (../);
    other .md paths are files that commands write (out/bias.md)."""
    return {name for name in MARKDOWN.findall(text)
            if name.startswith(("docs/", "../")) or Path(name).stem.isupper()}


def test_the_scan_finds_markdown_references():
    assert cited('"""See docs/rules.md, README.md and (../notes/X.md)."""') == {"docs/rules.md", "README.md",
                                                                                "../notes/X.md"}
    assert cited("# the formula of NOTES.md, section 2") == {"NOTES.md"}
    assert not cited("x = 'model.onnx'  # no markdown here; writes out/table.md")


def test_every_cited_markdown_file_is_in_the_repository():
    markdown = [rel for rel in tracked() if rel.suffix == ".md"]
    present = {rel.name for rel in markdown} | {rel.as_posix() for rel in markdown}
    missing = []
    for path, text in texts():
        if path == Path(__file__):
            continue
        for name in cited(text):
            if name.startswith("../") or (name not in present and Path(name).name not in present):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert not missing, "references to files the repository does not contain:\n" + "\n".join(sorted(missing))
