"""Render a grid of cell strings as Markdown, LaTeX (booktabs) or HTML, with some cells emphasised.

Tables and the report share these so that a number looks the same in every output. No third-party
table library is needed (pandas' ``to_markdown`` wants ``tabulate``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import pandas as pd

DASH = "—"


def fmt_num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return DASH
    return f"{value:.{digits}f}"


def fmt_signed(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:+.{digits}f}".replace("-", "−")


def _mask(frame: pd.DataFrame, bold: pd.DataFrame | None) -> pd.DataFrame:
    if bold is None:
        return pd.DataFrame(False, index=frame.index, columns=frame.columns)
    return bold.reindex(index=frame.index, columns=frame.columns).fillna(False).astype(bool)


def _numeric_like(column: pd.Series) -> bool:
    """Right-align columns of numbers and 'm ± s' cells; left-align text."""
    values = [str(v) for v in column if str(v) != DASH]
    return bool(values) and all(v[:1].isdigit() or v[:1] in "-−+." for v in values)


def to_markdown(frame: pd.DataFrame, bold: pd.DataFrame | None = None, index_label: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; the index becomes the first column when ``index_label`` is given."""
    mask = _mask(frame, bold)
    header = ([index_label] if index_label is not None else []) + [str(c) for c in frame.columns]

    def esc(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    aligns = [":---"] if index_label is not None else []
    aligns += ["---:" if _numeric_like(frame[c]) else ":---" for c in frame.columns]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join(aligns) + "|"]
    for idx, row in frame.iterrows():
        cells = [esc(idx)] if index_label is not None else []
        for col in frame.columns:
            text = esc(row[col])
            cells.append(f"**{text}**" if mask.at[idx, col] and text != DASH else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "→": r"$\to$", "−": r"$-$", "Δ": r"$\Delta$", "α": r"$\alpha$",
                  "—": "--", "·": r"$\cdot$", "≥": r"$\geq$"}


def latex_escape(text: object) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    for sym, rep in _LATEX_SYMBOLS.items():
        out = out.replace(sym, rep)
    return out


def to_latex(frame: pd.DataFrame, bold: pd.DataFrame | None = None, index_label: str | None = None,
             caption: str | None = None, label: str | None = None) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``); emphasised cells in bold."""
    mask = _mask(frame, bold)
    spec = ("l" if index_label is not None else "") + "c" * len(frame.columns)
    header = ([index_label] if index_label is not None else []) + [str(c) for c in frame.columns]
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    lines += [r"\begin{tabular}{" + spec + "}", r"\toprule",
              " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for idx, row in frame.iterrows():
        cells = [latex_escape(idx)] if index_label is not None else []
        for col in frame.columns:
            text = latex_escape(row[col])
            cells.append(r"\textbf{" + text + "}" if mask.at[idx, col] and row[col] != DASH else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(frame: pd.DataFrame, bold: pd.DataFrame | None = None, index_label: str | None = None,
            caption: str | None = None, titles: pd.DataFrame | None = None) -> str:
    """An HTML table; ``titles`` (same shape) become the cells' hover text."""
    mask = _mask(frame, bold)
    header = ([index_label] if index_label is not None else []) + [str(c) for c in frame.columns]
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{html.escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for idx, row in frame.iterrows():
        cells = [f"<th scope='row'>{html.escape(str(idx))}</th>"] if index_label is not None else []
        for col in frame.columns:
            text = html.escape(str(row[col]))
            hover = str(titles.at[idx, col]) if titles is not None and idx in titles.index and col in titles.columns \
                else ""
            attr = f" title='{html.escape(hover, quote=True)}'" if hover else ""
            cells.append(f"<td{attr}><strong>{text}</strong></td>" if mask.at[idx, col] and row[col] != DASH
                         else f"<td{attr}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out) + "\n"


def records_frame(records: Sequence[dict], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Records to a frame of display strings (NaN/None as a dash), for tables that are lists of rows."""
    frame = pd.DataFrame.from_records(list(records), columns=list(columns) if columns else None)

    def show(v: object) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return DASH
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    return frame.apply(lambda col: col.map(show)) if not frame.empty else frame
