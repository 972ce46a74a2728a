"""The documentation a clone carries: every link leads somewhere, and nothing cites pages that
are not part of the repository (the design notes the project was first written from)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from scripts.api_reference import heading_anchors

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "BENCHMARKS.md", *sorted(f"docs/{p.name}" for p in ROOT.glob("docs/*.md"))]

# [text](target) and ![alt](target), with an optional "title".
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,}).*?^\s{0,3}\1[`~]*\s*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# Outside design notes, cited by path or by name. Built from parts so that this file does not
# cite them itself.
NOTES = ["API", "SYNC", "DEPLOY", "STYLE", "SERVERS"]
CITATION = re.compile(
    r"\.\./" + "shared" + r"|\b(?:" + "|".join(NOTES) + r")\.md\b" + r"|shared[/ ]BENCHMARKS\.md"
)


def links(markdown: str) -> list[str]:
    """The link targets in `markdown`, leaving out code blocks and code spans."""
    return LINK.findall(CODE_SPAN.sub("", FENCE.sub("", markdown)))


def test_every_relative_link_leads_to_a_file_and_heading_of_the_repository():
    broken = []
    for page in PAGES:
        for target in links((ROOT / page).read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            resolved = (ROOT / page).parent / path if path else ROOT / page
            resolved = resolved.resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                broken.append(f"{page}: {target} (no such file in the repository)")
                continue
            if anchor and resolved.suffix == ".md":
                anchors = {a for _, a in heading_anchors(resolved.read_text(encoding="utf-8"))}
                if anchor not in anchors:
                    broken.append(f"{page}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_link_checker_sees_links_and_only_links():
    markdown = "[a](b.md#c) `[x](in-code)` ![i](img.png)\n```\n[y](in-a-block)\n```\n"
    assert links(markdown) == ["b.md#c", "img.png"]
    assert "api.md" in links((ROOT / "docs" / "README.md").read_text(encoding="utf-8"))


def repository_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def test_nothing_cites_notes_outside_the_repository():
    found = []
    for name in repository_files():
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and other binary files
        for number, line in enumerate(text.splitlines(), 1):
            if CITATION.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "say it in the project's own words or link docs/ instead:\n" + "\n".join(
        found
    )


def test_the_citation_check_knows_the_project_s_own_pages():
    assert not CITATION.search("results go to BENCHMARKS.md; see docs/api.md and DEPLOYMENT")
    assert CITATION.search("the spec: shared " + "BENCHMARKS.md")
    assert CITATION.search("(" + "SYNC" + ".md)")
