"""`dualmcu docs`: the manual pages, shipped inside the package, for users without the repository."""

from __future__ import annotations

from importlib import resources

import click

from .common import main


def pages() -> dict[str, str]:
    """Page name (file name without .md) -> its text."""
    root = resources.files("dualmcu.docs")
    return {p.name[:-3]: p.read_text(encoding="utf-8") for p in root.iterdir() if p.name.endswith(".md")}


def page_names() -> list[str]:
    return sorted(p.name[:-3] for p in resources.files("dualmcu.docs").iterdir() if p.name.endswith(".md"))


# The help names every page there is: a list written by hand fell behind (8 of 12).
@main.command("docs", help=f"Show a manual page ({', '.join(page_names())}), or list them with their "
                           "titles when NAME is omitted.")
@click.argument("name", required=False)
def docs_cmd(name: str | None) -> None:
    found = pages()
    if name is None:
        for page, text in sorted(found.items()):
            title = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")
            click.echo(f"{page:<12} {title}")
        return
    key = name.removesuffix(".md").removeprefix("docs/")
    if key not in found:
        raise click.BadParameter(f"no page {name!r}; there are: {', '.join(sorted(found))}", param_hint="NAME")
    click.echo_via_pager(found[key]) if click.get_text_stream("stdout").isatty() else click.echo(found[key])
