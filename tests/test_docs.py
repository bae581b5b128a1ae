"""README and docs: every relative link names a file that exists, and every #anchor a heading
in it (GitHub's rule: lowercase, punctuation dropped, spaces to hyphens)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading's text."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_anchor_follows_githubs_rule_by_hand():
    assert anchor("Coinrun with the variance floor (the `cpu` preset), 3 seeds") == (
        "coinrun-with-the-variance-floor-the-cpu-preset-3-seeds"
    )
    assert anchor("What the latent carries: momentum and background") == (
        "what-the-latent-carries-momentum-and-background"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            if fragment not in {anchor(h) for h in headings}:
                broken.append(f"{target}: no such heading")
    assert not broken, broken
