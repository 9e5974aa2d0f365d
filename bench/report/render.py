"""One document, two renderings: the report as markdown and as a self-contained HTML page.

Why a tiny document model instead of a template engine: the report must render the same content twice
(report.md for diffs and repositories, report.html for reading), offline, with no extra dependency. Sections
build a list of blocks; this module writes them out. Figures are PNG files under figures/ (referenced by the
markdown) and embedded in the HTML as base64 data URIs, so the page works moved, mailed or opened offline
without a CDN or JavaScript.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from bench.utils.tables import format_table


@dataclass
class FigureBlock:
    name: str  # file stem under figures/
    figure: Figure
    caption: str
    alt: str


@dataclass
class Document:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append((f"h{level}", text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        if items:
            self.blocks.append(("ul", items))

    def table(self, frame: pd.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def figure(self, name: str, figure: Figure | None, caption: str, alt: str | None = None) -> None:
        if figure is not None:
            self.blocks.append(("figure", FigureBlock(name, figure, caption, alt or caption)))


def save_figures(doc: Document, figures_dir: Path, dpi: int = 110) -> dict[str, Path]:
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for kind, block in doc.blocks:
        if kind == "figure":
            assert isinstance(block, FigureBlock)
            path = figures_dir / f"{block.name}.png"
            block.figure.savefig(path, dpi=dpi, format="png")
            paths[block.name] = path
    return paths


def to_markdown(doc: Document, figures_rel: str = "figures") -> str:
    out = [f"# {doc.title}\n"]
    for kind, block in doc.blocks:
        if kind.startswith("h"):
            out.append(f"{'#' * int(kind[1])} {block}\n")
        elif kind == "p":
            out.append(f"{block}\n")
        elif kind == "ul":
            out.append("".join(f"- {item}\n" for item in block))  # type: ignore[union-attr]
        elif kind == "table":
            out.append(format_table(block))  # type: ignore[arg-type]
        elif kind == "pre":
            out.append(f"```\n{block}\n```\n")
        elif kind == "figure":
            assert isinstance(block, FigureBlock)
            out.append(f"![{block.alt}]({figures_rel}/{block.name}.png)\n\n*{block.caption}*\n")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #0072B2;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f0f4f8}
tr:nth-child(even) td{background:#fafafa}code{background:#f3f3f3;padding:0 .2em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
figure{margin:1.5em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.9em;color:#444;margin-top:.3em}
"""


def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)


def to_html(doc: Document, figure_paths: dict[str, Path]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    for kind, block in doc.blocks:
        if kind.startswith("h"):
            anchor = re.sub(r"[^a-z0-9]+", "-", str(block).lower()).strip("-")
            parts.append(f'<{kind} id="{anchor}">{_inline(str(block))}</{kind}>')
        elif kind == "p":
            parts.append(f"<p>{_inline(str(block))}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(str(i))}</li>" for i in block) + "</ul>")  # type: ignore[union-attr]
        elif kind == "table":
            parts.append(_html_table(block))  # type: ignore[arg-type]
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(str(block))}</pre>")
        elif kind == "figure":
            assert isinstance(block, FigureBlock)
            data = base64.b64encode(figure_paths[block.name].read_bytes()).decode("ascii")
            parts.append(
                f'<figure id="fig-{block.name}"><img src="data:image/png;base64,{data}" '
                f'alt="{html.escape(block.alt)}" data-file="figures/{block.name}.png">'
                f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "<p><em>(no rows)</em></p>"
    shown = frame.astype(object).where(frame.notna(), "")
    shown = shown.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)
    return shown.to_html(index=False, escape=True, border=0)
