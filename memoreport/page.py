"""One self-contained HTML page: headings, paragraphs, tables and PNG images embedded as
base64 data URIs; inline CSS, no script, nothing fetched when it opens."""
from __future__ import annotations

import base64
import html

STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { border-bottom: 1px solid #aaa; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
img { display: block; max-width: 100%; margin: 0.5em 0 1em; }
img.inline { display: inline-block; margin-right: 1em; vertical-align: top; }
.ok { color: #176117; font-weight: bold; } .fail { color: #a11; font-weight: bold; }
.note { color: #666; }
"""


class Page:
    """The report being written, part by part, in order."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, css: str | None = None) -> None:
        cls = f' class="{css}"' if css else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, head: list, rows: list[list]) -> None:
        cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row)
                       + "</tr>" for row in rows)
        self.parts.append(f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, png: bytes, alt: str, inline: bool = False) -> None:
        """``inline``: side by side with the next inline images (small ones)."""
        data = base64.b64encode(png).decode("ascii")
        cls = ' class="inline"' if inline else ""
        self.parts.append(f'<img{cls} alt="{html.escape(alt)}" '
                          f'src="data:image/png;base64,{data}">')

    def render(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>\n"
                f"<body>\n<h1>{html.escape(self.title)}</h1>\n" + "\n".join(self.parts)
                + "\n</body></html>\n")
