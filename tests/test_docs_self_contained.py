"""docs/ stand on their own: they cite no file that the repository does not hold."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_docs_cite_no_file_outside_the_repository() -> None:
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    cited = re.compile(r"`([A-Za-z0-9_./-]+\.(?:md|py|toml|tsv|csv))`")
    missing = []
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        for match in cited.finditer(text):
            name = match.group(1)
            if "/" not in name and not any(REPO.rglob(name)):
                missing.append(f"{doc.name}: {name}")
        missing += [f"{doc.name}: {m}" for m in re.findall(r"NOTES-[a-z]+|\.\./shared/\S+", text)]
    assert not missing, missing
