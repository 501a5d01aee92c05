"""Rendering a report: its figures as PNG bytes, its blocks as a self-contained HTML page and as Markdown.

A report is a list of blocks: ("h1" | "h2" | "h3" | "p", text), ("table", header, rows) and ("figures",
[(name, png bytes, caption)]); `code` in text becomes <code> in HTML.
"""

import base64
import html
import io
import re
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

ANNOTATE_UP_TO = 12  # confusion matrices of at most this many classes get their counts written in
DPI = 90
FILES = "report_files"  # beside report.md: its figures
CSS = """
body{font-family:system-ui,sans-serif;color:#222;max-width:1400px;margin:1.5em auto;padding:0 1em}
h2{border-bottom:2px solid #ddd;margin-top:2em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:14px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#f2f2f2}
.scroll{overflow-x:auto}
.figures{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}
figure{margin:0}
figcaption{font-size:13px;color:#555;max-width:560px}
img{max-width:100%}
code{background:#f2f2f2;padding:0 3px;border-radius:3px}
"""


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def curve_figure(title: str, ylabel: str, curves: Sequence[tuple], log: bool = False) -> bytes:
    """Curves [(label, steps, values, plot style)] over training steps."""
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for label, steps, values, style in curves:
        ax.plot(steps, values, label=label, **style)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return png(fig)


def confusion_figure(task: str, matrix: Sequence[Sequence[int]], names: Sequence[str] = ()) -> bytes:
    """Heatmap of a [true, predicted] count matrix, coloured by the fraction of each true class; axes
    labelled with `names` (class indices if they do not match the matrix)."""
    counts = np.asarray(matrix, np.int64)
    n = len(counts)
    names = list(names) if len(names) == n else [str(i) for i in range(n)]
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 2.2 + 0.24 * n
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.subplots()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="fraction of the true class")
    ax.set(title=f"{task} ({counts.sum()} examples)", xlabel="predicted", ylabel="true")
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    if n <= ANNOTATE_UP_TO:
        for i, j in np.ndindex(n, n):
            color = "white" if rates[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=8)
    return png(fig)


def run_colors(n: int) -> list:
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def inline_html(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_html(title: str, blocks: Sequence[tuple]) -> str:
    """A self-contained page: inline CSS, figures as data: URLs."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
    ]
    for block in blocks:
        match block:
            case (("h1" | "h2" | "h3" | "p") as tag, text):
                parts.append(f"<{tag}>{inline_html(text)}</{tag}>")
            case ("table", header, rows):
                head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
                    for row in rows
                )
                parts.append(f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>')
            case ("figures", figures):
                parts.append('<div class="figures">')
                for name, data, caption in figures:
                    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
                    parts.append(
                        f'<figure id="{html.escape(name)}"><img src="{src}" alt="{html.escape(name)}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
                    )
                parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def markdown_cell(text: str) -> str:
    return text.replace("|", r"\|")


def render_markdown(blocks: Sequence[tuple]) -> str:
    """Markdown with the figures linked as FILES/<name>.png."""
    parts = []
    for block in blocks:
        match block:
            case (("h1" | "h2" | "h3") as tag, text):
                parts.append(f"{'#' * int(tag[1])} {text}")
            case ("p", text):
                parts.append(text)
            case ("table", header, rows):
                lines = [header, ["---"] + ["---:"] * (len(header) - 1), *rows]
                parts.append("\n".join("| " + " | ".join(map(markdown_cell, line)) + " |" for line in lines))
            case ("figures", figures):
                parts += [f"![{name}]({FILES}/{name}.png)\n*{caption}*" for name, _, caption in figures]
    return "\n\n".join(parts) + "\n"
