"""``build_report(study_dir)``: the study's report as ``report.md`` and a self-contained ``report.html``.

The report is written for a person who did not run the study: what was run (the spec), how far it got (trials
by state), what won (best configuration per method, selected on validation, with test accuracy), the paper's
table layouts (with the paper's numbers where the study reproduces one), the figures, and what failed and why.
Tables go to ``tables/*.csv|.md|.tex`` and figures to ``figures/*.png`` beside the report; the HTML embeds the
figures as base64 so the one file can be mailed or opened anywhere.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from study.layout import TEACHER_CALLS, TEACHER_CALLS_COMPUTED, pair_display

from . import paper
from .curves import FigureResult, build_figures
from .load import STATES, Study, load_study
from .render import DASH, records_frame, to_html, to_markdown
from .tables import (
    AnyTable,
    Skipped,
    build_tables,
    fmt_config,
    method_labels,
    ordered_methods,
    trial_config,
    write_table,
)

_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ccc; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f5; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #444; } pre { background: #f6f6f8; padding: .8em; overflow-x: auto; }
.note { color: #555; font-size: .92em; } .error { color: #a40000; }
"""


@dataclass
class _Doc:
    """Builds the Markdown and the HTML side by side from the same blocks."""

    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        anchor = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
        self.html.append(f"<h{level} id='{anchor}'>{html.escape(text)}</h{level}>")

    def para(self, text: str, cls: str = "") -> None:
        self.md.append(text + "\n")
        attr = f" class='{cls}'" if cls else ""
        self.html.append(f"<p{attr}>{html.escape(text)}</p>")

    def bullets(self, items: list[str], cls: str = "") -> None:
        if not items:
            return
        self.md.append("".join(f"- {i}\n" for i in items))
        attr = f" class='{cls}'" if cls else ""
        self.html.append(f"<ul{attr}>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, md: str, html_text: str) -> None:
        self.md.append(md)
        self.html.append(html_text)

    def frame(self, frame: pd.DataFrame, index_label: str | None = None) -> None:
        self.table(to_markdown(frame, index_label=index_label), to_html(frame, index_label=index_label))

    def code(self, text: str, lang: str = "", summary: str | None = None) -> None:
        self.md.append(f"```{lang}\n{text.rstrip()}\n```\n")
        block = f"<pre><code>{html.escape(text.rstrip())}</code></pre>"
        self.html.append(f"<details><summary>{html.escape(summary)} (click to show)</summary>{block}</details>"
                         if summary else block)

    def figure(self, fig: FigureResult, rel: str) -> None:
        self.md.append(f"![{fig.title}]({rel})\n\n*{fig.caption}*\n")
        data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
        self.html.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(fig.title)}'>"
                         f"<figcaption>{html.escape(fig.caption)}</figcaption></figure>")

    def render_md(self) -> str:
        return "\n".join(self.md)

    def render_html(self, title: str) -> str:
        body = "\n".join(self.html)
        return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _num(value: Any, digits: int = 2) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return DASH
    return f"{v:.{digits}f}" if math.isfinite(v) else DASH


def _pair(row: pd.Series) -> str:
    """The trial's pair as tables show it (``teacher → student``), a dash for a trial without a student."""
    teacher, student = row.get("teacher"), row.get("student")
    if not isinstance(student, str):
        return DASH
    return pair_display(teacher if isinstance(teacher, str) else None, student)


def _overview(doc: _Doc, study: Study) -> None:
    trials = study.trials
    counts = trials["state"].value_counts().to_dict() if not trials.empty else {}
    active = sum(counts.get(s, 0) for s in ("running", "pending", "paused"))
    status = "no trials yet" if trials.empty else (
        f"still running ({active} of {len(trials)} trials not finished)" if active else "finished")
    datasets = sorted({str(d) for d in trials.get("dataset", pd.Series(dtype=object)).dropna()})
    pairs = sorted({_pair(r) for _, r in trials.iterrows()} - {DASH}) if not trials.empty else []
    epochs = sorted({str(e) for e in trials.get("config/epochs", pd.Series(dtype=object)).dropna()})
    items = [
        f"Study dir: {study.root}",
        f"Status: {status}",
        f"Trials: {len(trials)} ({', '.join(f'{counts[s]} {s}' for s in STATES if counts.get(s))})"
        if len(trials) else "Trials: none found",
        f"Data set: {', '.join(datasets) or DASH}",
        f"Methods: {_methods_text(trials) if not trials.empty else DASH}",
        f"Teacher → student pairs: {', '.join(pairs) or DASH}",
        f"Epochs per trial: {', '.join(epochs) or DASH}",
        f"Searched or varied keys: {', '.join(study.knobs()) or 'none'}",
    ]
    passes = _teacher_passes(trials)
    if passes:
        items.append(passes)
    matched = _reproduced(study)
    if matched:
        items.append("Reproduces the paper's " + ", ".join(t.replace("table", "Table ") for t in matched)
                     + f" ({paper.PAPER}): the paper's numbers stand beside the measured ones.")
    doc.bullets(items)
    doc.para("How to read the numbers: every accuracy is in percent. A cell 'm ± s' is the mean and the sample "
             "standard deviation over the seeds of the configuration selected on the validation split (the test "
             "split is never used to choose); the number of seeds and the paper's number are on hover and in the "
             "CSV. Bold marks the best cell of a column.", cls="note")


def teacher_passes(trials: pd.DataFrame) -> tuple[int, int, int] | None:
    """(passes computed, passes requested, trials counted): the study's teacher forward passes, summed over
    the trials that report both counts (each trial's last report; a resumed trial's counts carry on)."""
    if trials.empty or TEACHER_CALLS_COMPUTED not in trials or TEACHER_CALLS not in trials:
        return None
    both = trials[[TEACHER_CALLS_COMPUTED, TEACHER_CALLS]].apply(pd.to_numeric, errors="coerce").dropna()
    if both.empty:
        return None
    return int(both[TEACHER_CALLS_COMPUTED].sum()), int(both[TEACHER_CALLS].sum()), len(both)


def _teacher_passes(trials: pd.DataFrame) -> str | None:
    counts = teacher_passes(trials)
    if counts is None:
        return None
    computed, requested, n = counts
    if not requested:
        return None
    share = f" ({100 * computed / requested:.0f} %)"
    return (f"Teacher passes: {computed:,} computed of {requested:,} requested{share} over {n} trial(s); the "
            "teacher stream, the shared store and the budget cache served the rest (teacher_calls_computed "
            "against teacher_calls)")


def _methods_text(trials: pd.DataFrame) -> str:
    """The study's methods in table order, each with its declared label: ``KD (kd)``."""
    labels = method_labels(trials)
    return ", ".join(m if labels[m] == m else f"{labels[m]} ({m})" for m in ordered_methods(trials))


def _reproduced(study: Study) -> list[str]:
    trials = study.trials
    if trials.empty:
        out: list[str] = []
    else:
        pairs = {(t, s) for t, s in zip(trials["teacher"], trials["student"]) if isinstance(t, str)
                 and isinstance(s, str)}
        out = paper.reproduced_tables(set(trials["method"].dropna()), pairs, study.knobs(), method_labels(trials))
    if study.spec:
        out += paper.paper_tables_for_spec(study.spec)
    return list(dict.fromkeys(out))


def _states(doc: _Doc, study: Study) -> None:
    doc.heading(2, "Trials by state")
    trials = study.trials
    if trials.empty:
        doc.para("No trial folders or experiment state were found in the study dir yet.")
        return
    grid = pd.crosstab(trials["method"].fillna("?"), trials["state"])
    cols = [s for s in STATES if s in grid.columns]
    rows = ordered_methods(trials) + sorted(set(grid.index) - set(ordered_methods(trials)))
    grid = grid.reindex(index=rows, columns=cols, fill_value=0)
    grid.loc["all methods"] = grid.sum()
    grid["total"] = grid.sum(axis=1)
    doc.frame(grid.astype(int).astype(str), index_label="method")
    stopped = int(((trials["state"] == "terminated") & ~trials["completed"].astype(bool)).sum())
    if stopped:
        doc.para(f"{stopped} terminated trial(s) stopped before their last epoch (early stopping by the "
                 "scheduler); tables leave them out.", cls="note")


def _table_block(doc: _Doc, table: AnyTable, files: list[Path], out: Path) -> None:
    doc.heading(3, table.title)
    doc.para(table.caption)
    doc.table(table.to_markdown(), table.to_html())
    doc.bullets(list(table.notes), cls="note")
    doc.para("Files: " + ", ".join(str(p.relative_to(out)) for p in files), cls="note")


def _errored(doc: _Doc, study: Study) -> None:
    trials = study.trials
    bad = trials[trials["state"] == "errored"] if not trials.empty else trials
    doc.heading(2, "Errored trials")
    if bad.empty:
        doc.para("None.")
        return
    knobs = study.knobs()
    records = []
    for _, row in bad.iterrows():
        config = trial_config(row)
        records.append({"trial": row["trial_id"], "method": row["method"], "pair": _pair(row), "seed": row["seed"],
                        "configuration": fmt_config({k: config.get(k) for k in knobs if k in config}),
                        "epochs done": int(row["n_reports"]), "message": row["error"]})
    doc.frame(records_frame(records))
    doc.para("The full tracebacks are in each trial folder's error.txt.", cls="note")


def _unfinished(doc: _Doc, study: Study) -> None:
    trials = study.trials
    if trials.empty:
        return
    waiting = trials[trials["state"].isin(["running", "pending", "paused"])]
    if waiting.empty:
        return
    doc.heading(2, "Trials not finished yet")
    records = [{"trial": r["trial_id"], "method": r["method"], "pair": _pair(r), "seed": r["seed"],
                "state": r["state"], "epochs reported": int(r["n_reports"]),
                "configured epochs": r.get("config/epochs"), "latest val top-1 (%)": _num(r.get("val/top1"))}
               for _, r in waiting.iterrows()]
    doc.frame(records_frame(records))


def _all_trials(doc: _Doc, study: Study) -> None:
    trials = study.trials
    if trials.empty:
        return
    doc.heading(2, "All trials")
    knobs = study.knobs()
    records = []
    for _, r in trials.iterrows():
        config = trial_config(r)
        records.append({"trial": r["trial_id"], "method": r["method"], "pair": _pair(r), "seed": r["seed"],
                        "configuration": fmt_config({k: config.get(k) for k in knobs if k in config}),
                        "state": r["state"], "epochs": int(r["n_reports"]), "val top-1 (%)": _num(r.get("val/top1")),
                        "test top-1 (%)": _num(r.get("test/top1"))})
    doc.frame(records_frame(records))
    doc.para("Last reported values; test top-1 exists only for trials that reached their last epoch.", cls="note")


def _clean(out: Path) -> None:
    """Remove outputs of an earlier report so a figure that no longer applies does not linger."""
    for pattern in ("figures/*.png", "tables/*.csv", "tables/*.md", "tables/*.tex"):
        for path in out.glob(pattern):
            path.unlink()


def build_report(study_dir: str | Path, out_dir: str | Path | None = None, baseline: str | None = None) -> Path:
    """Write ``report.md``, ``report.html``, ``tables/`` and ``figures/`` for the study; return report.html's path.

    ``out_dir`` defaults to the study dir; ``baseline`` is the method the heatmap compares against (default kd,
    else ce, else the first method). Works on finished, running and partly failed studies. PNGs in
    ``figures/`` and CSV/MD/TeX files in ``tables/`` of ``out_dir`` left by an earlier report are replaced.
    """
    study = load_study(study_dir)
    out = Path(out_dir).absolute() if out_dir is not None else study.root
    out.mkdir(parents=True, exist_ok=True)
    _clean(out)
    tables = build_tables(study)
    figures = build_figures(study, out / "figures", baseline=baseline)
    skipped: list[Skipped] = [t for t in tables if isinstance(t, Skipped)] + [
        f for f in figures if isinstance(f, Skipped)]

    doc = _Doc()
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = f"Study report: {study.name}"
    doc.heading(1, title)
    doc.para(f"Generated {now} from the files in the study dir (no Ray needed).", cls="note")
    _overview(doc, study)
    doc.heading(2, "Spec")
    if study.spec_text:
        doc.code(study.spec_text, "yaml", summary="spec.yaml (the resolved spec the study ran)")
    else:
        doc.para("No spec.yaml in the study dir (the study was not started with `study run`).", cls="note")
    _states(doc, study)

    best = next((t for t in tables if getattr(t, "key", "") == "best_per_method"), None)
    doc.heading(2, "Best configuration per method")
    if isinstance(best, Skipped) or best is None:
        doc.para(f"Not available: {best.reason if best else 'no trials'}.", cls="note")
    else:
        doc.para(best.caption)
        doc.table(best.to_markdown(), best.to_html())
        write_table(best, out / "tables")

    doc.heading(2, "Tables")
    shown = 0
    for table in tables:
        if isinstance(table, Skipped) or table is best:
            continue
        _table_block(doc, table, write_table(table, out / "tables"), out)
        shown += 1
    if not shown:
        doc.para("No table layout applies to this study yet (see 'Not available in this study' below).",
                 cls="note")

    doc.heading(2, "Figures")
    drawn = [f for f in figures if isinstance(f, FigureResult)]
    for fig in drawn:
        doc.heading(3, fig.title)
        doc.figure(fig, str(fig.path.relative_to(out)))
    if not drawn:
        doc.para("No figure could be drawn yet (see 'Not available in this study' below).", cls="note")

    _errored(doc, study)
    _unfinished(doc, study)
    doc.heading(2, "Not available in this study")
    if skipped:
        doc.bullets([f"{s.title}: {s.reason}." for s in skipped])
    else:
        doc.para("Every table and figure applied.")
    if study.problems:
        doc.heading(2, "Files that could not be read")
        doc.bullets(study.problems, cls="error")
    _all_trials(doc, study)

    (out / "report.md").write_text(doc.render_md())
    html_path = out / "report.html"
    html_path.write_text(doc.render_html(title))
    return html_path
