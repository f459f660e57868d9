"""The documentation stays true to the code: the generated reference, runbooks, links."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agent.config.reference import reference_markdown

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_the_committed_configuration_reference_is_up_to_date() -> None:
    committed = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert committed == reference_markdown(), (
        "docs/configuration.md is out of date: run `make docs` and commit it")


def _anchors(markdown: str) -> set[str]:
    """GitHub-style heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^a-z0-9 _-]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_alert_links_to_a_runbook_section() -> None:
    rules = yaml.safe_load((ROOT / "config" / "alerts.yml").read_text())
    anchors = _anchors((DOCS / "operations.md").read_text(encoding="utf-8"))
    urls = [rule["annotations"]["runbook_url"]
            for group in rules["groups"] for rule in group["rules"]]
    assert urls
    for url in urls:
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md", url
        assert anchor in anchors, f"{url}: no such section in docs/operations.md"


def test_relative_links_in_readme_and_docs_resolve() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # an absolute URL
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name}: broken link {target}"
            if anchor and resolved.suffix == ".md":
                assert anchor in _anchors(resolved.read_text(encoding="utf-8")), (
                    f"{page.name}: no section #{anchor} in {resolved.name}")
