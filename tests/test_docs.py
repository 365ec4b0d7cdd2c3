"""The README stays one screen (pitch, quick start, command table, guides) and every relative link in it and in
docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(page: Path) -> list[str]:
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def test_every_relative_link_resolves():
    assert len(PAGES) > 1, "docs/ holds the guides the README links to"
    broken = []
    for page in PAGES:
        for target in relative_links(page):
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_every_guide_is_linked_from_the_readme():
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in relative_links(ROOT / "README.md")}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs/ pages the README's Guides list does not link: {orphans}"


def test_readme_stays_short_and_keeps_the_quick_start():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200, "the README is the pitch, quick start, commands and guides: move the rest"
    # .ci/run runs the second command; a fresh machine needs both, exactly as written.
    assert "bash scripts/install.sh && HF_HUB_OFFLINE=1 finetune launch recipes/tiny.yaml --local" in text
    assert "bash scripts/install.sh dev && HF_HUB_OFFLINE=1 python -m pytest -q" in text


def test_the_link_finder_sees_links_and_skips_code():
    page = ROOT / "README.md"
    assert "docs/serving.md" in relative_links(page)
    assert not CODE.sub("", "`[a](b)`") and not FENCE.sub("", "```\n[a](b)\n```")
