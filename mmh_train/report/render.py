"""Rendering a report's blocks: Markdown for ``report.md``, standalone HTML (plots embedded) for ``report.html``.

The report is first built as a list of :class:`Block` (headings, paragraphs, tables, images, code); each
renderer turns that one list into its format, so both files always say the same.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Block", "markdown", "standalone_html"]


@dataclass(frozen=True)
class Block:
    kind: str  # "h1", "h2", "p", "code", "table", "img", "list", "link"
    text: str = ""
    rows: tuple = ()
    header: tuple = ()
    href: str = ""



def _md_inline(text: str) -> str:
    return text.replace("\n", " ")


def _md_cell(text: str) -> str:
    return _md_inline(text).replace("|", "\\|")


def _md_link(href: str) -> str:
    return f"<{href}>" if any(c in href for c in " ()<>") else href


def markdown(blocks: Sequence[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b.kind == "h1":
            lines += [f"# {_md_inline(b.text)}", ""]
        elif b.kind == "h2":
            lines += [f"## {_md_inline(b.text)}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "code":
            fence = "````" if "```" in b.text else "```"
            lines += [fence, b.text, fence, ""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join("---" for _ in b.header) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            lines.append("")
        elif b.kind == "img":
            lines += [f"![{b.text}]({_md_link(b.href)})", ""]
        elif b.kind == "list":
            lines += [f"- {_md_inline(item)}" for item in b.rows] + [""]
        elif b.kind == "link":
            lines += [f"[{b.text}]({_md_link(b.href)})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _html_text(text: str) -> str:
    """Escapes text and turns the Markdown ``**bold**`` used in paragraphs into ``<strong>``."""
    parts = html.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts)) if len(parts) % 2 \
        else html.escape(text)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;line-height:1.45;color:#222}table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
pre{background:#f6f6f6;padding:.7em;overflow-x:auto}img{max-width:100%;border:1px solid #ddd}"""


def standalone_html(blocks: Sequence[Block], title: str, images: Mapping[str, bytes] | None = None) -> str:
    """The page; images whose bytes are in ``images`` (by href) are embedded, so the file stands alone."""
    images = images or {}
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_html_text(b.text)}</p>")
        elif b.kind == "code":
            body.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b.kind == "img":
            src = (f"data:image/png;base64,{base64.b64encode(images[b.href]).decode('ascii')}" if b.href in images
                   else html.escape(b.href))
            body.append(f'<p><img src="{src}" alt="{html.escape(b.text)}"></p>')
        elif b.kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(item)}</li>" for item in b.rows) + "</ul>")
        elif b.kind == "link":
            body.append(f'<p><a href="{html.escape(b.href)}">{html.escape(b.text)}</a></p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
