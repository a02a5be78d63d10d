"""The README's "Clients" section shows every client tests/live/test_clients.py runs against a live server."""

from support.readme import readme_snippets

SNIPPETS = readme_snippets()


def test_the_readme_shows_every_client():
    headings = {heading for heading, _, _ in SNIPPETS}
    assert {"OpenAI, Python", "OpenAI, Node", "Vercel AI SDK", "fal, Python", "litellm", "curl"} <= headings
    assert any(heading.startswith("fal, JavaScript") for heading in headings)
