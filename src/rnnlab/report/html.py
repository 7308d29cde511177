"""One self-contained HTML page that embeds a report's PNG figures (by relative path) and its tables."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Section", "write_html"]


@dataclass
class Section:
    """A heading, a paragraph, figures (file names relative to the page, with captions) and an optional table."""

    heading: str
    text: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)
    table: list[list[str]] | None = None  # first row is the header


_STYLE = """body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}
th{background:#f2f2f2}pre{background:#f7f7f7;padding:.5em;overflow:auto}"""


def write_html(path: str | Path, title: str, sections: Sequence[Section], intro: str = "") -> Path:
    """Write the page. Every image must exist next to the page.

    Raises:
        FileNotFoundError: an image named by a section is missing (the page would show a broken image).
    """
    path = Path(path)
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.heading)}</h2>")
        if sec.text:
            parts.append(f"<p>{html.escape(sec.text)}</p>")
        if sec.table:
            head, *rows = sec.table
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in head) + "</tr>")
            parts.extend("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            parts.append("</table>")
        for name, caption in sec.images:
            if not (path.parent / name).is_file():
                raise FileNotFoundError(f"write_html: image {name!r} not found next to {path}")
            parts.append(f"<figure><img src=\"{html.escape(name)}\" alt=\"{html.escape(caption)}\">"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
