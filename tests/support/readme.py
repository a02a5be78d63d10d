"""The README's client snippets, as the tests read them."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_snippets() -> list[tuple[str, str, str]]:
    """(heading, language, code) of each fenced block in the README's Clients section."""
    section = README.read_text().split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    snippets = []
    for part in section.split("\n### ")[1:]:
        heading = part.splitlines()[0].strip()
        for language, code in re.findall(r"```(python|js|sh)\n(.+?)\n```", part, re.S):
            snippets.append((heading, language, code))
    return snippets
