"""Real third-party clients, unmodified, against a live server: the README's "Clients" snippets, run as
written (Python, Node, curl), and the Node suite in tests/js/ (openai, @fal-ai/client through proxyUrl,
the AI SDK with @ai-sdk/openai, @ai-sdk/openai-compatible and @ai-sdk/fal)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_snippets() -> list[tuple[str, str, str]]:
    """(heading, language, code) of each fenced block in the README's Clients section."""
    section = (ROOT / "README.md").read_text().split("\n## Clients\n", 1)[1].split("\n## ", 1)[0]
    snippets = []
    for part in section.split("\n### ")[1:]:
        heading = part.splitlines()[0].strip()
        for language, code in re.findall(r"```(python|js|sh)\n(.+?)\n```", part, re.S):
            snippets.append((heading, language, code))
    return snippets


SNIPPETS = readme_snippets()


def test_the_readme_shows_every_client():
    headings = {heading for heading, _, _ in SNIPPETS}
    assert {"OpenAI, Python", "OpenAI, Node", "Vercel AI SDK", "fal, Python", "litellm", "curl"} <= headings
    assert any(heading.startswith("fal, JavaScript") for heading in headings)
