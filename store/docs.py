"""The store's table reference as Markdown, generated from `store.schema`.

README.md carries this text between `<!-- schema:start -->` and `<!-- schema:end -->`; a test
checks it is current. Regenerate with `python -m store.docs --write`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from store.schema import TABLES

START, END = "<!-- schema:start -->", "<!-- schema:end -->"


def schema_markdown() -> str:
    parts = []
    for t in TABLES:
        parts.append(f"#### `{t.name}`\n\n{t.description} Sorted by `{', '.join(t.sort_key)}`.\n")
        parts.append("| column | type | description |\n|---|---|---|")
        for c in t.columns:
            null = " (nullable)" if c.nullable else ""
            parts.append(f"| `{c.name}` | {c.type}{null} | {c.description} |")
        parts.append("")
    return "\n".join(parts)


def readme_with_schema(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{schema_markdown()}\n{END}{tail}"


if __name__ == "__main__":
    path = Path(__file__).resolve().parents[1] / "README.md"
    text = readme_with_schema(path.read_text())
    if "--write" in sys.argv:
        path.write_text(text)
    else:
        sys.stdout.write(schema_markdown())
