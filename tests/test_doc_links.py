"""Every link of README.md and docs/*.md, and every docs/NAME.md named in the sources, resolves."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_relative_links_of_the_docs_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_docs_named_in_sources_and_makefile_exist():
    named = [ROOT / "Makefile", *(ROOT / "src").rglob("*.py"), *(ROOT / ".ci").iterdir()]
    for path in named:
        for doc in re.findall(r"docs/[\w-]+\.md", path.read_text()):
            assert (ROOT / doc).is_file(), f"{path.relative_to(ROOT)} names missing {doc}"
