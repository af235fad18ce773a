"""The README, docs/ and bench/README.md stand on their own: every link and path they show is in the repository.

(The commands their ``sh`` blocks show are checked against an installed wheel in tests/test_wheel.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# A path only one machine has, or one that climbs out of the repository.
FOREIGN_PATH = re.compile(r"(?<![\w.])(/work/|/home/|/root/|~/|(?:\.\./)+(?!bench/|docs/|src/|tests/)[\w-]+/)")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


def page_id(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_point_at_files_in_the_repository(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (page.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{page_id(page)} links outside the repository: {target}"
        assert resolved.exists(), f"{page_id(page)} links to a file that does not exist: {target}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_page_shows_a_path_outside_the_repository(page):
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = FOREIGN_PATH.search(line)
        assert match is None, f"{page_id(page)}:{number} names a path outside the repository: {line.strip()}"


def test_the_benchmark_page_links_nowhere_outside_the_repository():
    text = (REPO / "bench" / "README.md").read_text()
    for url in re.findall(r"https?://[^\s)>`]+", text):
        assert url.split("//", 1)[1].startswith(LOCAL_HOSTS), f"bench/README.md links outside the repository: {url}"
