"""The report as Markdown (figures linked as PNG files) and as one self-contained HTML page (figures
embedded as base64 PNG, tree drawings as inline SVG with segment text on hover; no script, no
external resource, so it opens anywhere, including MLflow's artifact view)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from treepo_lab.analysis.tables import Table

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;
border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:1em 0;font-size:.85em}th,td{border-bottom:
1px solid #ddd;padding:.3em .6em;text-align:right}th:first-child,td:first-child{text-align:left}caption{
caption-side:bottom;color:#555;font-size:.9em;padding-top:.4em}img{max-width:100%;height:auto}.note{color:#7a4b00}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}.tree{display:inline-block;margin:0 1em 1em 0;
vertical-align:top}code{background:#f4f4f4;padding:0 .2em}"""


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs (plain text, `code` allowed)
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (png path, caption)
    tables: list[Table] = field(default_factory=list)
    svgs: list[tuple[str, str]] = field(default_factory=list)  # (svg markup, caption)
    notes: list[str] = field(default_factory=list)


def markdown(title: str, sections: list[Section], out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [p + "\n" for p in s.text]
        lines += [f"> note: {n}\n" for n in s.notes]
        for t in s.tables:
            lines += [t.markdown(), "", f"*{t.caption}*" if t.caption else "", ""]
        for png, cap in s.figures:
            rel = png.relative_to(out_dir).as_posix()
            pdf = png.with_suffix(".pdf").relative_to(out_dir).as_posix()
            lines += [f"![{cap}]({rel})", "", f"*{cap}* ([PDF]({pdf}))", ""]
        for _, cap in s.svgs:
            lines += [f"- {cap}"]
        if s.svgs:
            lines += ["", "(the tree drawings are in report.html and as SVG files under trees/)", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Plain text with `code` spans; everything else escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def page(title: str, sections: list[Section]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f"<p>{_inline(p)}</p>" for p in s.text]
        body += [f'<p class="note">note: {_inline(n)}</p>' for n in s.notes]
        body += [t.html() for t in s.tables]
        for png, cap in s.figures:
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(cap)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(cap)}</figcaption></figure>")
        for svg, cap in s.svgs:
            body.append(f'<div class="tree">{svg}<div>{html.escape(cap)}</div></div>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>{"".join(body)}</body></html>\n')
