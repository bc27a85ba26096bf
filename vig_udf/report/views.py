"""Views shared by every report of the project (``vig check``, ``vig report``, the demo): figures and HTML.

- :func:`plot_distributions`: histograms and box plots of named value sets, one PNG;
- :func:`render_answer` / :func:`conversation_html`: an answer with every token coloured by its VIG
  (green positive, red negative, opacity by |VIG| up to ``scale``, the value in the tooltip);
- :func:`html_page`: a self-contained page (the CSS of the token view) around a body.

Pure functions over plain Python and numpy values; no Spark or torch.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

POSITIVE_RGB = (0, 160, 60)
NEGATIVE_RGB = (210, 40, 40)
CSS = """
body { font-family: sans-serif; max-width: 64em; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
.conv { border-top: 1px solid #ccc; padding: 0.5em 0; }
.q { color: #333; } .a { font-family: monospace; font-size: 1.05em; white-space: pre-wrap; }
.tok { border-radius: 2px; }
.verdict { font-weight: bold; padding: 0.6em; border: 2px solid #444; }
.pass { background: #e3f5e3; } .fail { background: #fbe3e3; }
img { max-width: 100%; }
"""


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(named: list[tuple[str, np.ndarray]], path: Path, title: str, xlabel: str) -> None:
    """Step histograms (density) and box plots of each named value set, side by side, into ``path``."""
    plt = pyplot()
    named = [(name, np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))]) for name, v in named]
    shown = [(name, v) for name, v in named if v.size]
    fig, (ax_h, ax_b) = plt.subplots(1, 2, figsize=(10, 3.8))
    if shown:
        lo = min(float(v.min()) for _, v in shown)
        hi = max(float(v.max()) for _, v in shown)
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 31)
        for name, v in shown:
            ax_h.hist(v, bins=bins, density=True, histtype="step", lw=1.5, label=f"{name} (n={v.size})")
        ax_h.legend(fontsize=7)
        ax_b.boxplot([v for _, v in shown], vert=False, showmeans=True)
        ax_b.set_yticks(range(1, len(shown) + 1), [name for name, _ in shown], fontsize=8)
    else:
        ax_h.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_h.transAxes)
    for ax in (ax_h, ax_b):
        ax.axvline(0.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
    ax_h.set_ylabel("density")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def token_scale(values) -> float:
    """Full colour at the 95th percentile of |VIG| of the tokens shown (1.0 when there are none)."""
    arr = np.abs(np.asarray(list(values), dtype=float))
    arr = arr[np.isfinite(arr)]
    scale = float(np.percentile(arr, 95)) if arr.size else 1.0
    if not scale > 0:
        scale = float(arr.max()) if arr.size and arr.max() > 0 else 1.0
    return scale


def token_style(value: float, scale: float) -> str:
    """The CSS background of a token with VIG ``value``."""
    if value is None or not math.isfinite(value) or scale <= 0:
        return ""
    alpha = min(1.0, abs(value) / scale) * 0.85
    rgb = POSITIVE_RGB if value > 0 else NEGATIVE_RGB if value < 0 else (0, 0, 0)
    return f"background-color: rgba({','.join(map(str, rgb))},{alpha:.3f})"


def render_answer(answer: str, spans: list[tuple[int, int, float]], scale: float) -> str:
    """HTML of one answer: each (start, end, vig) span coloured, the text between spans left plain.

    Spans index the stripped answer text (the scorer's ``token_char_start`` / ``token_char_end``)."""
    text = answer.strip()
    parts, cursor = [], 0
    for start, end, value in sorted(spans, key=lambda s: (s[0], s[1])):
        start = max(int(start), cursor)
        end = max(int(end), start)
        if start > cursor:
            parts.append(html.escape(text[cursor:start]))
        title = f"VIG {value:+.3f}" if value is not None and math.isfinite(value) else "VIG n/a"
        parts.append(f'<span class="tok" style="{token_style(value, scale)}" title="{title}">'
                     f"{html.escape(text[start:end])}</span>")
        cursor = max(cursor, end)
    if cursor < len(text):
        parts.append(html.escape(text[cursor:]))
    return "".join(parts)


def conversation_html(example: dict, scale: float, *, heading: str | None = None) -> str:
    """One conversation (``questions``, ``answers``, ``token_turn``, ``token_char_start``, ``token_char_end``,
    ``token_vig``) with its answer tokens coloured."""
    questions, answers = list(example.get("questions", [])), list(example.get("answers", []))
    spans_by_turn: dict[int, list] = {}
    for turn, start, end, value in zip(example.get("token_turn", []), example.get("token_char_start", []),
                                       example.get("token_char_end", []), example.get("token_vig", [])):
        spans_by_turn.setdefault(int(turn), []).append((start, end, float(value)))
    title = heading if heading is not None else str(example.get("sample_id", ""))
    body = [f'<div class="conv"><h3>{html.escape(title)}</h3>']
    for i in range(max(len(questions), len(answers))):
        if i < len(questions):
            body.append(f'<p class="q"><b>Q:</b> {html.escape(str(questions[i]))}</p>')
        if i < len(answers):
            body.append(f'<p class="a"><b>A:</b> {render_answer(str(answers[i]), spans_by_turn.get(i, []), scale)}</p>')
    body.append("</div>")
    return "\n".join(body)


def legend_html(scale: float) -> str:
    return (f"<p>Green: positive VIG (the image made the token more likely); red: negative. Opacity grows with "
            f"|VIG|, full at {scale:.3f} (95th percentile of |VIG| over the tokens shown). Hover a token for its "
            "value.</p>")


def token_view_html(examples: list[dict], *, title: str = "Answer tokens coloured by VIG") -> str:
    """A page of conversations with every answer token coloured by its VIG (one colour scale for all)."""
    scale = token_scale(v for ex in examples for v in ex.get("token_vig", []))
    body = [f"<h1>{html.escape(title)}</h1>", legend_html(scale)] + [conversation_html(ex, scale) for ex in examples]
    return html_page(title, "\n".join(body))


def html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def html_table(header: list[str], rows: list[list]) -> str:
    """An HTML table; cells are escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def md_table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines; ``|`` in cells escaped."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return (["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
            + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])
