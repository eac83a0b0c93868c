"""The paper's table layouts filled from a study's trials: mean ± std over seeds, best per column, paper numbers.

Every cell is the test top-1 (Table 4: top-1 and top-5) of the configuration selected on validation: among the
trials that belong to the cell (a method and teacher-student pair, plus a knob value in Tables 2/3 and the
budget table), trials are grouped into configurations (every config key except the seed, paths and execution
settings, see ``analysis.load.NON_CONFIG_KEYS``), the configuration with the best mean ``val/top1`` over its
seeds wins (ties: more seeds, then the first in order), and the cell shows that configuration's test mean ±
sample standard deviation (ddof 1) over seeds with the number of seeds n. Only trials that ran all their epochs
count. The best cell of each column is marked (where at least two cells have numbers; the teacher row is not a
contender). When a cell is one the paper printed, the paper's number and the difference measured − paper stand
beside it. Each builder returns a ``Skipped`` with the reason when the study lacks the data for it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from study.layout import IDENTITY_KEYS, NON_CONFIG_KEYS, TEST_TOP1, VAL_TOP1, pair_display

from . import paper
from .load import Study, _hashable
from .render import DASH, fmt_num, fmt_signed, records_frame, to_html, to_latex, to_markdown

SELECT_METRIC = VAL_TOP1
REPORT_METRIC = TEST_TOP1
TRAIN_IMAGES = "train/images"
"""Student images forwarded per training epoch (``trainables.loop``): the compute a method spent."""
FULL_TRAINING = "full training set, final epoch (the paper's protocol)"
"""The protocol of trials run with ``val_fraction: 0``: no validation split, so nothing is selected on it."""
VALIDATION_SELECTED = "selected on val/top1"
BEST_EPOCH = "best epoch on test (optimistic, as the paper's code reports)"
"""The best test accuracy over epochs (needs ``eval_test_every: 1``): shown beside, never instead of, the final."""
TEACHER_ONLY = frozenset({"teacher"})
"""Methods that train the teacher architecture alone (no student)."""
STUDENT_ALONE = frozenset({"ce"})
"""Methods that train the student alone: they belong to every pair with their student."""


# -- statistics and selection ---------------------------------------------------------------------------------
@dataclass
class Stat:
    """Mean and sample standard deviation (ddof 1, NaN for one value) of the finite values, and their count."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[Any]) -> Stat:
        vals = [float(v) for v in values if v is not None and _finite(v)]
        if not vals:
            return cls(math.nan, math.nan, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan, len(vals))

    def text(self, digits: int = 2) -> str:
        if self.n == 0:
            return DASH
        if self.n == 1:
            return f"{fmt_num(self.mean, digits)} (n=1)"
        return f"{fmt_num(self.mean, digits)} ± {fmt_num(self.std, digits)} (n={self.n})"


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def trial_config(row: pd.Series) -> dict[str, Any]:
    """The configuration a trial ran (its config keys minus seed, paths and execution settings)."""
    out = {}
    for col, value in row.items():
        if not str(col).startswith("config/"):
            continue
        key = str(col)[len("config/"):]
        if key in NON_CONFIG_KEYS or key == "method" or not _present(value):
            continue
        out[key] = value
    return out


@dataclass
class Selection:
    """The configuration selected on validation for one cell, with its statistics over seeds."""

    config: dict[str, Any]
    knobs: dict[str, Any]
    val: Stat
    report: dict[str, Stat]
    n_configs: int
    trial_ids: list[str]
    protocol: str = VALIDATION_SELECTED
    """``VALIDATION_SELECTED``, or ``FULL_TRAINING`` for the one configuration of a cell run with val_fraction 0."""


def full_training(trials: pd.DataFrame) -> bool:
    """Whether every trial ran with ``val_fraction: 0`` (trained on the whole training split, no validation)."""
    col = _column(trials, "val_fraction")
    return len(trials) > 0 and all(_present(v) and _same(v, 0) for v in col)


def finished(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran all their epochs and did not error: the only ones tables and selection use."""
    if trials.empty:
        return trials
    return trials[trials["completed"].astype(bool) & (trials["state"] != "errored")]


def select(
    trials: pd.DataFrame, metrics: Sequence[str] = (REPORT_METRIC,), by: str = SELECT_METRIC
) -> Selection | None:
    """Pick the configuration with the best mean ``by`` over seeds; report ``metrics`` over its seeds.

    When some of the trials come from a study's ``final`` stage (the configuration its search selected on
    validation, re-run for every seed), only those count: the selection was already made, on more trials.
    The search trial a final stage reuses as its ``seeds[0]`` run (``final_reuse``) is one of them.
    """
    trials = finished(trials)
    if not trials.empty and full_training(trials):
        return _full_training_selection(trials, metrics)
    if trials.empty or by not in trials.columns:
        return None
    trials = trials[_where(trials[by], _finite)]
    if trials.empty:
        return None
    all_configs = [trial_config(row) for _, row in trials.iterrows()]
    candidates = len({_hashable(c) for c in all_configs})
    pool = trials
    if "stage_kind" in trials.columns and _final_runs(trials).any():
        pool = trials[_final_runs(trials).to_numpy()]
    configs = [trial_config(row) for _, row in pool.iterrows()]
    groups: dict[Any, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(_hashable(config), []).append(i)
    scored = []
    for order, idx in enumerate(groups.values()):
        stat = Stat.of(pool.iloc[idx][by])
        scored.append((stat.mean, stat.n, -order, idx, stat))
    scored.sort(key=lambda s: (s[0], s[1], s[2]), reverse=True)
    _, _, _, idx, val = scored[0]
    chosen = pool.iloc[idx]
    config = configs[idx[0]]
    varying: set[str] = set()
    for c in all_configs:  # the keys that set this configuration apart from the others the study tried
        varying |= {k for k in set(c) | set(config) if _hashable(c.get(k)) != _hashable(config.get(k))}
    report = {m: Stat.of(chosen[m]) if m in chosen.columns else Stat.of([]) for m in metrics}
    return Selection(config=config, knobs={k: config.get(k) for k in sorted(varying - IDENTITY_KEYS)}, val=val,
                     report=report, n_configs=candidates, trial_ids=[str(t) for t in chosen["trial_id"]])


def _final_runs(trials: pd.DataFrame) -> pd.Series:
    """Trials of a final stage, and the search trials final stages reuse as their ``seeds[0]`` run."""
    final = trials["stage_kind"] == "final"
    if "final_reuse" in trials.columns:
        final = final | trials["final_reuse"].fillna(False).astype(bool)
    return final


def _full_training_selection(trials: pd.DataFrame, metrics: Sequence[str]) -> Selection | None:
    """The cell of trials without a validation split: its one configuration's final epoch (None when the cell
    holds several configurations, since choosing among them could only use test)."""
    configs = [trial_config(row) for _, row in trials.iterrows()]
    if len({_hashable(c) for c in configs}) != 1:
        return None
    report = {m: Stat.of(trials[m]) if m in trials.columns else Stat.of([]) for m in metrics}
    return Selection(config=configs[0], knobs={}, val=Stat.of([]), report=report, n_configs=1,
                     trial_ids=[str(t) for t in trials["trial_id"]], protocol=FULL_TRAINING)


# -- tables ---------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    stat: Stat
    metric: str = REPORT_METRIC
    selection: Selection | None = None
    paper: float | None = None
    best: bool = False
    best_epoch: Stat | None = None
    """``BEST_EPOCH`` over the same trials, where test was evaluated every epoch."""
    images: Stat | None = None
    """``train/images`` (student images forwarded per epoch) of the same trials: the budget table's compute."""

    @property
    def diff(self) -> float | None:
        if self.paper is None or self.stat.n == 0:
            return None
        return self.stat.mean - self.paper

    @property
    def full_training(self) -> bool:
        return self.selection is not None and self.selection.protocol == FULL_TRAINING

    def text(self) -> str:
        """The compact cell: mean ± std over seeds (the mean alone for one seed); † marks a cell of the full
        training set (``FULL_TRAINING``), ‡ the best epoch on test (``BEST_EPOCH``)."""
        if self.stat.n == 0:
            return DASH
        out = fmt_num(self.stat.mean) if self.stat.n == 1 else f"{fmt_num(self.stat.mean)} ± {fmt_num(self.stat.std)}"
        if self.full_training:
            out += " †"
        if self.best_epoch is not None and self.best_epoch.n:
            out += f" · best epoch {fmt_num(self.best_epoch.mean)}‡"
        if self.images is not None and self.images.n:
            out += f" · {self.images.mean:,.0f} img/epoch"
        return out

    def hover(self) -> str:
        """What the compact cell leaves out (HTML title; the CSV has it as columns): n and the paper's number."""
        out = f"n={self.stat.n}"
        if self.paper is not None:
            out += f" · paper {fmt_num(self.paper)} (Δ {fmt_signed(self.diff)})"
        return out


@dataclass
class Table:
    """A grid of cells (rows x columns) in one of the paper's layouts."""

    key: str
    title: str
    caption: str
    row_label: str
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    notes: list[str] = field(default_factory=list)
    paper_table: str | None = None
    not_contenders: frozenset[str] = frozenset()

    def mark_best(self) -> None:
        for col in self.columns:
            scored = [(r, self.cells[(r, col)].stat.mean) for r in self.rows if (r, col) in self.cells
                      and self.cells[(r, col)].stat.n > 0 and r not in self.not_contenders]
            if len(scored) < 2:
                continue
            top = max(v for _, v in scored)
            for r, v in scored:
                self.cells[(r, col)].best = v >= top - 1e-12

    @property
    def has_paper(self) -> bool:
        return any(c.paper is not None for c in self.cells.values())

    def display(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        text = pd.DataFrame(DASH, index=self.rows, columns=self.columns)
        bold = pd.DataFrame(False, index=self.rows, columns=self.columns)
        for (r, c), cell in self.cells.items():
            text.at[r, c] = cell.text()
            bold.at[r, c] = cell.best
        return text, bold

    def hovers(self) -> pd.DataFrame:
        titles = pd.DataFrame("", index=self.rows, columns=self.columns)
        for (r, c), cell in self.cells.items():
            titles.at[r, c] = cell.hover()
        return titles

    def legend(self) -> str:
        """The note that says what the compact cells leave out: seeds per cell, where the paper's numbers are."""
        counts = sorted({c.stat.n for c in self.cells.values() if c.stat.n})
        if not counts:
            return ""
        seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} (per cell in the CSV)"
        out = f"Cells: mean ± std over seeds; seeds per cell: {seeds}."
        if self.has_paper:
            out += " The paper's numbers and the difference measured − paper are in the CSV (paper, diff) and on " \
                   "hover in report.html."
        return out

    def to_frame(self) -> pd.DataFrame:
        """One CSV row per cell: numbers unformatted, with the selected configuration and its trials."""
        records = []
        for r in self.rows:
            for c in self.columns:
                cell = self.cells.get((r, c))
                if cell is None:
                    continue
                sel = cell.selection
                records.append({
                    "table": self.key, "row": r, "column": c, "metric": cell.metric,
                    "mean": cell.stat.mean, "std": cell.stat.std, "n": cell.stat.n, "best": cell.best,
                    "paper": cell.paper, "diff": cell.diff,
                    "val_mean": sel.val.mean if sel else math.nan, "val_std": sel.val.std if sel else math.nan,
                    "n_configs": sel.n_configs if sel else 0,
                    "protocol": sel.protocol if sel else "",
                    "best_epoch_mean": cell.best_epoch.mean if cell.best_epoch else math.nan,
                    "best_epoch_std": cell.best_epoch.std if cell.best_epoch else math.nan,
                    "images_per_epoch": cell.images.mean if cell.images else math.nan,
                    "selected_config": json.dumps(sel.config, default=str, sort_keys=True) if sel else "",
                    "trial_ids": " ".join(sel.trial_ids) if sel else "",
                })
        return pd.DataFrame.from_records(records)

    def to_markdown(self) -> str:
        text, bold = self.display()
        return to_markdown(text, bold, index_label=self.row_label)

    def to_latex(self) -> str:
        text, bold = self.display()
        return to_latex(text, bold, index_label=self.row_label, caption=f"{self.title}. {self.caption}",
                        label=f"tab:{self.key}")

    def to_html(self) -> str:
        text, bold = self.display()
        return to_html(text, bold, index_label=self.row_label, titles=self.hovers())


@dataclass
class ListTable:
    """A table that is a list of records (best configuration per method, top configurations of a search)."""

    key: str
    title: str
    caption: str
    frame: pd.DataFrame
    shown: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    paper_table: str | None = None

    def _display(self) -> pd.DataFrame:
        if self.shown is not None:
            return self.shown
        return records_frame(self.frame.to_dict("records"), list(self.frame.columns))

    def to_frame(self) -> pd.DataFrame:
        return self.frame

    def to_markdown(self) -> str:
        return to_markdown(self._display())

    def to_latex(self) -> str:
        return to_latex(self._display(), caption=f"{self.title}. {self.caption}", label=f"tab:{self.key}")

    def to_html(self) -> str:
        return to_html(self._display())


@dataclass
class Skipped:
    """A table or figure the study has no data for, with the reason (shown in the report)."""

    key: str
    title: str
    reason: str


AnyTable = Table | ListTable


def write_table(table: AnyTable, out_dir: str | Path) -> list[Path]:
    """Write ``<key>.csv``, ``<key>.md`` and ``<key>.tex`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{table.key}.csv", out / f"{table.key}.md", out / f"{table.key}.tex"]
    table.to_frame().to_csv(paths[0], index=False)
    notes = "".join(f"\n- {n}" for n in table.notes)
    paths[1].write_text(f"### {table.title}\n\n{table.caption}\n\n{table.to_markdown()}{notes}\n")
    paths[2].write_text(table.to_latex())
    return paths


# -- helpers shared by the layouts ----------------------------------------------------------------------------
def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _where(values: pd.Series, test: Callable[[Any], bool]) -> pd.Series:
    """Boolean mask of ``test`` over ``values``; safe on empty and string-typed columns."""
    return pd.Series([bool(test(v)) for v in values], index=values.index, dtype=bool)


def _has(values: pd.Series) -> pd.Series:
    return _where(values, _present)


def ordered_methods(trials: pd.DataFrame) -> list[str]:
    """The study's methods in table order: each method's declared ``order`` (see ``paper.with_method_info``),
    ties and undeclared methods by name."""
    orders = {m: paper.method_order(m) for m in (str(m) for m in trials["method"].dropna())}
    if paper.ORDER_COLUMN in trials.columns:
        given = trials[["method", paper.ORDER_COLUMN]].dropna().drop_duplicates("method")
        orders.update({str(m): float(o) for m, o in zip(given["method"], given[paper.ORDER_COLUMN])})
    return sorted(orders, key=lambda m: (orders[m], m))


def method_labels(trials: pd.DataFrame) -> dict[str, str]:
    """``{method: declared label}`` of the study's methods (the name where the study dir does not say)."""
    labels = {str(m): str(m) for m in trials["method"].dropna()}
    if paper.LABEL_COLUMN in trials.columns:
        given = trials[["method", paper.LABEL_COLUMN]].dropna().drop_duplicates("method")
        labels.update({str(m): str(label) for m, label in zip(given["method"], given[paper.LABEL_COLUMN])})
    return labels


def study_pairs(trials: pd.DataFrame) -> list[tuple[Any, str]]:
    """Teacher-student pairs of the study: from distillation trials, else the students trained alone."""
    distill = trials[~trials["method"].isin(TEACHER_ONLY | STUDENT_ALONE)]
    distill = distill[_has(distill["teacher"]) & _has(distill["student"])]
    if not distill.empty:
        pairs = list(dict.fromkeys(zip(distill["teacher"], distill["student"])))
    else:
        alone = trials[_has(trials["student"])]
        pairs = list(dict.fromkeys((t if _present(t) else None, s) for t, s in zip(alone["teacher"], alone["student"])))
    return pairs


def cell_trials(trials: pd.DataFrame, method: str, teacher: Any, student: Any) -> pd.DataFrame:
    """Trials of ``method`` for a pair; the teacher alone matches on its teacher, a student alone on its student."""
    rows = trials[trials["method"] == method]
    if method in TEACHER_ONLY:
        return rows[rows["teacher"] == teacher] if _present(teacher) else rows.iloc[0:0]
    rows = rows[rows["student"] == student]
    if method in STUDENT_ALONE or not _present(teacher):
        return rows
    return rows[rows["teacher"] == teacher]


def _column(trials: pd.DataFrame, key: str) -> pd.Series:
    col = f"config/{key}"
    return trials[col] if col in trials.columns else pd.Series([None] * len(trials), index=trials.index)


def _prefer(trials: pd.DataFrame, key: str, value: Any) -> pd.DataFrame:
    """Restrict to trials with ``key == value`` when there are any (the paper varies one knob at a time)."""
    col = _column(trials, key)
    match = trials[_where(col, lambda v: _present(v) and _same(v, value))]
    return match if not match.empty else trials


def _same(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return str(a) == str(b)


def _dataset_note(study: Study, table: str) -> list[str]:
    datasets = {str(d) for d in study.trials["dataset"].dropna()} if "dataset" in study.trials else set()
    wanted = paper.DATASETS[table]
    names = {d.lower().replace("-", "").replace("_", "") for d in datasets}
    if names and names != {wanted}:
        return [f"Paper numbers are {wanted} results ({paper.PAPER}); this study ran on {', '.join(sorted(datasets))}, "
                "so the differences measure the data set and schedule as much as the method."]
    return [f"Paper numbers: {paper.PAPER}, {paper.FILES[table]}."]


def _progress_note(study: Study) -> list[str]:
    trials = study.trials
    if trials.empty:
        return []
    waiting = int((trials["state"].isin(["running", "pending", "paused"])).sum())
    stopped = int(((trials["state"] == "terminated") & ~trials["completed"].astype(bool)).sum())
    notes = []
    if waiting:
        notes.append(f"{waiting} trial(s) still running, paused or pending are not in this table yet.")
    if stopped:
        notes.append(f"{stopped} trial(s) stopped early (scheduler) are left out: they did not run all epochs.")
    return notes


def _fill(table: Table, row: str, col: str, sel: Selection | None, metric: str, paper_value: float | None) -> None:
    if sel is None:
        if paper_value is not None:
            table.cells[(row, col)] = Cell(Stat.of([]), metric, None, paper_value)
        return
    table.cells[(row, col)] = Cell(sel.report.get(metric, Stat.of([])), metric, sel, paper_value)


def _finish(table: Table, study: Study, paper_key: str | None) -> Table | Skipped:
    if not any(c.stat.n for c in table.cells.values()):
        return Skipped(table.key, table.title, "no finished trial has the metrics for this layout yet")
    if paper_key and table.has_paper:
        table.paper_table = paper_key
        table.notes = _dataset_note(study, paper_key) + table.notes
    _label_protocol(table)
    _add_best_epoch(table, study.history)
    table.mark_best()
    table.notes = [n for n in (table.legend(), *table.notes, *_progress_note(study)) if n]
    return table


def _label_protocol(table: Table) -> None:
    """Say which protocol produced the numbers: a table of full-training cells never claims validation selection."""
    full = [c for c in table.cells.values() if c.full_training]
    if not full:
        return
    if len(full) == sum(1 for c in table.cells.values() if c.selection is not None):
        table.caption = table.caption.replace(VALIDATION_SELECTED, f"run on the {FULL_TRAINING}")
        table.caption = f"Protocol: {FULL_TRAINING}; nothing was selected on validation. {table.caption}"
    table.notes.append(f"† {FULL_TRAINING}: trained with val_fraction 0 (no validation split), the final epoch's "
                       "test accuracy; not selected on validation.")


def best_epoch_stat(history: pd.DataFrame, trial_ids: Sequence[str], metric: str) -> Stat | None:
    """Mean ± std over trials of each trial's best ``metric`` over its epochs; None unless every epoch of every
    trial has it (``eval_test_every: 1``), so a best over a few epochs is never passed off as the paper's."""
    if history.empty or metric not in history.columns or "trial_id" not in history.columns or not trial_ids:
        return None
    ids = history["trial_id"].astype(str)
    best = []
    for trial_id in trial_ids:
        values = list(history.loc[ids == str(trial_id), metric])
        if not values or not all(_finite(v) for v in values):
            return None
        best.append(max(float(v) for v in values))
    return Stat.of(best)


def _add_best_epoch(table: Table, history: pd.DataFrame) -> None:
    """Beside each paper-comparable cell, ``BEST_EPOCH`` where the trials logged test every epoch."""
    if not table.has_paper:
        return
    for cell in table.cells.values():
        if cell.selection is not None:
            cell.best_epoch = best_epoch_stat(history, cell.selection.trial_ids, cell.metric)
    if any(c.best_epoch is not None and c.best_epoch.n for c in table.cells.values()):
        table.notes.append(f"‡ {BEST_EPOCH}: the mean over seeds of each trial's best test accuracy over its "
                           "epochs (eval_test_every: 1), beside the final epoch's, which is the table's number.")


# -- the layouts ----------------------------------------------------------------------------------------------
def table1_methods_by_pair(study: Study) -> Table | Skipped:
    """Table 1: test top-1 per method (rows) and teacher → student pair (columns)."""
    title = "Table 1 — test top-1 (%) by method and teacher → student pair"
    trials = finished(study.trials)
    if trials.empty:
        return Skipped("table1_methods_by_pair", title, "no trial has finished all its epochs yet")
    unbudgeted = trials[~_has(_column(trials, "teacher_budget"))]
    trials = unbudgeted if not unbudgeted.empty else trials  # Table 1 is the full-data setting
    pairs = study_pairs(trials)
    methods, labels = ordered_methods(trials), method_labels(trials)
    cols = [pair_display(t, s) for t, s in pairs]
    table = Table("table1_methods_by_pair", title,
                  "Each cell: test top-1 of the configuration selected on val/top1, mean ± std over seeds (n); "
                  "best student per column in bold.", "method", methods, cols, {},
                  not_contenders=TEACHER_ONLY)
    for m in methods:
        for (t, s), col in zip(pairs, cols):
            sel = select(cell_trials(trials, m, t, s))
            ref = paper.table1(m, t if _present(t) else None, s, labels.get(m))
            if sel is not None or ref is not None and m in set(trials["method"]):
                _fill(table, m, col, sel, REPORT_METRIC, ref)
    return _finish(table, study, "table1")


def table2_connector_depth(study: Study) -> Table | Skipped:
    """Table 2: test top-1 per connector depth (rows) and method (columns, per pair)."""
    title = "Table 2 — test top-1 (%) by connector depth and method"
    key = "table2_connector_depth"
    trials = finished(study.trials)
    trials = trials[_has(_column(trials, "connector_depth"))] if not trials.empty else trials
    if trials.empty:
        return Skipped(key, title, "no finished trial has a connector_depth")
    depths = sorted({int(d) for d in trials["config/connector_depth"]})
    if len(depths) < 2:
        return Skipped(key, title, f"connector_depth does not vary in this study (only {depths[0]})")
    combos = [(m, t, s) for t, s in study_pairs(trials) for m in ordered_methods(trials)
              if not cell_trials(trials, m, t, s).empty]
    multi_pair = len({(t, s) for _, t, s in combos}) > 1
    cols = [f"{m} ({pair_display(t, s)})" if multi_pair else m for m, t, s in combos]
    rows = [f"{d}: {paper.connector_label(d)}" for d in depths]
    labels = method_labels(trials)
    table = Table(key, title, "Rows: connector_depth and its layers. Each cell: test top-1 of the configuration "
                  "selected on val/top1 at that depth, mean ± std over seeds (n); best depth per column in bold.",
                  "connector", rows, cols, {})
    for d, row in zip(depths, rows):
        at_depth = trials[_where(trials["config/connector_depth"], lambda v, d=d: _same(v, d))]
        for (m, t, s), col in zip(combos, cols):
            _fill(table, row, col, select(cell_trials(at_depth, m, t, s)), REPORT_METRIC,
                  paper.table2(m, d, t, s, labels.get(m)))
    return _finish(table, study, "table2")


def table3_ablation(study: Study) -> Table | Skipped:
    """Table 3: alpha_ce values and loss combinations (rows) per pair (columns), for IJCKD."""
    title = "Table 3 — test top-1 (%) by alpha_ce and loss combination"
    key = "table3_ablation"
    trials = finished(study.trials)
    if trials.empty:
        return Skipped(key, title, "no trial has finished all its epochs yet")
    has_alpha = trials[_has(_column(trials, "alpha_ce"))]
    has_comb = trials[_has(_column(trials, "loss_combination"))]
    alphas = sorted({float(a) for a in has_alpha.get("config/alpha_ce", [])})
    combs = sorted({str(c) for c in has_comb.get("config/loss_combination", [])},
                   key=lambda c: list(paper.LOSS_COMBINATIONS).index(c) if c in paper.LOSS_COMBINATIONS else 9)
    if len(alphas) < 2 and len(combs) < 2:
        return Skipped(key, title, "neither alpha_ce nor loss_combination varies in this study")
    candidates = pd.concat([has_alpha, has_comb]).drop_duplicates("trial_id")
    methods = ordered_methods(candidates)
    method = "ijckd" if "ijckd" in methods else methods[0]
    own = trials[trials["method"] == method]
    pairs = study_pairs(own)
    cols = [pair_display(t, s) for t, s in pairs]
    rows: list[tuple[str, pd.DataFrame, str, Callable[[Any, Any], float | None]]] = []
    if len(alphas) >= 2:
        base = _prefer(own, "loss_combination", "sr")
        for a in alphas:
            subset = base[_where(_column(base, "alpha_ce"), lambda v, a=a: _present(v) and _same(v, a))]
            rows.append((f"α_ce = {a:g}", subset, method, lambda t, s, a=a: paper.table3("alpha_ce", a, t, s)))
        head = trials[trials["method"] == "teacher_head"]
        if not head.empty:
            rows.append(("ce_only (teacher_head)", head, "teacher_head",
                         lambda t, s: paper.table3("alpha_ce", "ce_only", t, s)))
    if len(combs) >= 2:
        base = _prefer(own, "alpha_ce", 1.0)
        for c in combs:
            subset = base[_where(_column(base, "loss_combination"), lambda v, c=c: str(v) == c)]
            rows.append((f"loss {paper.LOSS_COMBINATIONS.get(c, c)}", subset, method,
                         lambda t, s, c=c: paper.table3("loss_comb", c, t, s)))
    table = Table(key, title, f"Method {method}. α_ce rows use loss_combination sr where the study has it, loss "
                  "rows use α_ce = 1 where it has it (one knob at a time, as in the paper); each cell is the test "
                  "top-1 of the configuration selected on val/top1, mean ± std over seeds (n).",
                  "setting", [r[0] for r in rows], cols, {})
    for label, subset, who, ref in rows:
        for (t, s), col in zip(pairs, cols):
            _fill(table, label, col, select(cell_trials(subset, who, t, s)), REPORT_METRIC,
                  ref(t if _present(t) else None, s))
    return _finish(table, study, "table3")


def _is_imagenet(study: Study) -> bool:
    return any("imagenet" in str(d).lower() for d in study.trials.get("dataset", pd.Series(dtype=object)).dropna())


def table4_imagenet(study: Study) -> Table | Skipped:
    """Table 4: ImageNet-style top-1 and top-5 per method (rows) and pair (two columns each)."""
    title = "Table 4 — test top-1 / top-5 (%) by method and pair (ImageNet layout)"
    key = "table4_imagenet"
    trials = finished(study.trials)
    pairs = study_pairs(trials) if not trials.empty else []
    if not _is_imagenet(study) and not set(pairs) & paper.paper_pairs("table4"):
        return Skipped(key, title, "not an ImageNet study (no imagenet data set and no pair of the paper's Table 4)")
    if trials.empty:
        return Skipped(key, title, "no trial has finished all its epochs yet")
    methods, labels = ordered_methods(trials), method_labels(trials)
    cols, specs = [], []
    for t, s in pairs:
        for metric, short in (("test/top1", "top-1"), ("test/top5", "top-5")):
            cols.append(f"{pair_display(t, s)} {short}")
            specs.append((t, s, metric))
    table = Table(key, title, "Top-1 and top-5 of the same configuration (selected on val/top1), mean ± std over "
                  "seeds (n); best student per column in bold.", "method", methods, cols, {},
                  not_contenders=TEACHER_ONLY)
    for m in methods:
        for (t, s, metric), col in zip(specs, cols):
            sel = select(cell_trials(trials, m, t, s), metrics=("test/top1", "test/top5"))
            _fill(table, m, col, sel, metric,
                  paper.table4(m, t if _present(t) else None, s, metric[-4:], labels.get(m)))
    return _finish(table, study, "table4")


def table5_teacher_head(study: Study) -> Table | Skipped:
    """Table 5: the student through the teacher's frozen classifier vs its own classifier, per pair."""
    title = "Table 5 — test top-1 (%): teacher's classifier vs the student's own"
    key = "table5_teacher_head"
    trials = finished(study.trials)
    if trials.empty or "teacher_head" not in set(trials["method"]):
        return Skipped(key, title, "no finished teacher_head trial (the student trained through the teacher's head)")
    pairs = study_pairs(trials[trials["method"] == "teacher_head"])
    rows = [pair_display(t, s) for t, s in pairs]
    cols = ["teacher's classifier (teacher_head)", "own classifier (ce)"]
    table = Table(key, title, "Both trained with hard labels only; each cell is the test top-1 of the configuration "
                  "selected on val/top1, mean ± std over seeds (n); the better of the two in bold per column "
                  "is not meaningful, so compare along the row.", "pair", rows, cols, {})
    for (t, s), row in zip(pairs, rows):
        tt = t if _present(t) else None
        _fill(table, row, cols[0], select(cell_trials(trials, "teacher_head", t, s)), REPORT_METRIC,
              paper.table5("teacher", tt, s))
        _fill(table, row, cols[1], select(cell_trials(trials, "ce", t, s)), REPORT_METRIC, paper.table5("own", tt, s))
    return _finish(table, study, "table5")


def online_vs_offline(study: Study) -> Table | Skipped:
    """Online distillation (teacher trajectory) vs offline (final teacher), per pair, with KD/CE if present."""
    title = "Online vs offline distillation — test top-1 (%)"
    key = "online_vs_offline"
    trials = finished(study.trials)
    if trials.empty or not {"online", "offline"} & set(trials["method"]):
        return Skipped(key, title, "no finished online or offline trial")
    methods = [m for m in ("ce", "kd", "offline", "online") if m in set(trials["method"])]
    pairs = study_pairs(trials[trials["method"].isin(["online", "offline"])])
    rows = [pair_display(t, s) for t, s in pairs]
    table = Table(key, title, "Online: the student follows the teacher's checkpoint trajectory; offline: the final "
                  "teacher throughout, same loss. Test top-1 of the configuration selected on val/top1, mean ± std "
                  "over seeds (n); best per row is what matters, best per column in bold.", "pair", rows, methods, {})
    for (t, s), row in zip(pairs, rows):
        for m in methods:
            _fill(table, row, m, select(cell_trials(trials, m, t, s)), REPORT_METRIC, None)
    out = _finish(table, study, None)
    if isinstance(out, Table):
        out.notes.append("The paper ships no reference numbers for this comparison.")
    return out


def ckd_budget(study: Study) -> Table | Skipped:
    """CKD and its baselines against the teacher-call budget: rows budgets, columns methods."""
    title = "Accuracy vs teacher-call budget — test top-1 (%)"
    key = "ckd_budget"
    trials = finished(study.trials)
    trials = trials[_has(_column(trials, "teacher_budget"))] if not trials.empty else trials
    if trials.empty:
        return Skipped(key, title, "no finished trial has a teacher_budget")
    budgets = sorted({int(float(b)) for b in trials["config/teacher_budget"]})
    combos = [(m, t, s) for t, s in study_pairs(trials) for m in ordered_methods(trials)
              if not cell_trials(trials, m, t, s).empty]
    multi_pair = len({(t, s) for _, t, s in combos}) > 1
    cols = [f"{m} ({pair_display(t, s)})" if multi_pair else m for m, t, s in combos]
    rows = [f"{b} images" for b in budgets]
    table = Table(key, title, "Rows: teacher_budget (teacher calls = training images the teacher saw once). Test "
                  "top-1 of the configuration selected on val/top1, mean ± std over seeds (n); best method per row "
                  "is the comparison of interest, best budget per column in bold; img/epoch: student images "
                  "forwarded per training epoch (train/images), the compute each method spent.",
                  "budget", rows, cols, {})
    for b, row in zip(budgets, rows):
        at = trials[_where(trials["config/teacher_budget"], lambda v, b=b: _same(v, b))]
        for (m, t, s), col in zip(combos, cols):
            sel = select(cell_trials(at, m, t, s), metrics=(REPORT_METRIC, TRAIN_IMAGES))
            _fill(table, row, col, sel, REPORT_METRIC, None)
            if (row, col) in table.cells and sel is not None:
                table.cells[(row, col)].images = sel.report[TRAIN_IMAGES]
    return _finish(table, study, None)


def fmt_config(knobs: dict[str, Any]) -> str:
    """``k=v`` pairs; a key the configuration leaves unset shows as ``default``."""
    def show(v: Any) -> str:
        if v is None:
            return "default"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={show(v)}" for k, v in knobs.items()) or "(the only configuration)"


def _best_cells(own: pd.DataFrame, method: str) -> list[tuple[pd.DataFrame, str]]:
    """The cells of one method in the best-configuration table: one per teacher architecture for the teacher,
    one per pair for a student method, the whole method when its trials name no pair."""
    if method in TEACHER_ONLY:
        archs = list(dict.fromkeys(a for a in own["teacher"] if _present(a)))
        return [(own[own["teacher"] == a], str(a)) for a in archs] or [(own, DASH)]
    pairs = study_pairs(own)
    if not pairs:
        return [(own, DASH)]
    return [(cell_trials(own, method, t, s), pair_display(t, s)) for t, s in pairs]


def best_per_method(study: Study) -> ListTable | Skipped:
    """The configuration selected on validation for each method and pair, with its val and test accuracy."""
    title = "Best configuration per method"
    key = "best_per_method"
    trials = finished(study.trials)
    if trials.empty:
        return Skipped(key, title, "no trial has finished all its epochs yet")
    records = []
    for m in ordered_methods(trials):
        own = trials[trials["method"] == m]
        for cell, where in _best_cells(own, m):
            sel = select(cell, metrics=("test/top1", "test/top5"))
            if sel is None:
                continue
            records.append({
                "method": m, "pair": where,
                "configuration": fmt_config(sel.knobs), "configs compared": sel.n_configs,
                "seeds": sel.report[REPORT_METRIC].n if sel.protocol == FULL_TRAINING else sel.val.n,
                "val top-1 (%)": sel.val.text(), "test top-1 (%)": sel.report["test/top1"].text(),
                "test top-5 (%)": sel.report["test/top5"].text(),
                "val_mean": sel.val.mean, "val_std": sel.val.std, "test_top1_mean": sel.report["test/top1"].mean,
                "test_top1_std": sel.report["test/top1"].std, "test_top5_mean": sel.report["test/top5"].mean,
                "test_top5_std": sel.report["test/top5"].std, "n": sel.report["test/top1"].n,
                "selected_config": json.dumps(sel.config, default=str, sort_keys=True),
                "trials": " ".join(sel.trial_ids), "protocol": sel.protocol,
            })
    if not records:
        return Skipped(key, title, "no finished trial reported val/top1")
    frame = pd.DataFrame.from_records(records)
    shown_cols = ["method", "pair", "configuration", "configs compared", "seeds", "val top-1 (%)", "test top-1 (%)",
                  "test top-5 (%)"]
    raw_cols = [c for c in frame.columns if c not in shown_cols[5:]]
    full = frame["protocol"] == FULL_TRAINING
    notes = [f"Rows without a val top-1 ({', '.join(frame.loc[full, 'method'].unique())}) are the {FULL_TRAINING}: "
             "one configuration trained with val_fraction 0, not selected on validation."] if full.any() else []
    return ListTable(key, title, "Per method and pair (the teacher: per architecture), the configuration with the "
                     "best mean val/top1 over seeds (mean ± std over seeds, n); 'configuration' lists only the keys "
                     "that differ between the configurations compared.", frame[raw_cols],
                     shown=records_frame(frame[shown_cols].to_dict("records"), shown_cols), notes=notes)


def search_trials(study: Study) -> pd.DataFrame:
    """The finished trials of the study's searches: its ``search`` stages (``study.json``); for a study dir
    without stage kinds, every trial when it has an ``optuna.db``. Empty when the study searched nothing."""
    trials = finished(study.trials)
    if trials.empty:
        return trials
    kinds = trials["stage_kind"] if "stage_kind" in trials.columns else pd.Series([None] * len(trials))
    if kinds.notna().any():
        return trials[(kinds == "search").to_numpy()]
    return trials if study.optuna_dbs else trials.iloc[0:0]


def search_top_configs(study: Study, top: int = 10) -> ListTable | Skipped:
    """For searches: the best configurations on validation per method and pair, with their test accuracy."""
    title = "Search — top configurations on validation"
    key = "search_top_configs"
    trials = search_trials(study)
    if trials.empty:
        return Skipped(key, title, "the study ran no search (no finished trial of a search stage)")
    knobs = [k for k in study.knobs() if k not in ("epochs",)]
    records = []
    for m in ordered_methods(trials):
        own = trials[trials["method"] == m]
        for cell, where in _best_cells(own, m):
            groups: dict[Any, list[int]] = {}
            configs = [trial_config(r) for _, r in cell.iterrows()]
            for i, c in enumerate(configs):
                groups.setdefault(_hashable(c), []).append(i)
            for idx in groups.values():
                sub = cell.iloc[idx]
                config = configs[idx[0]]
                records.append({"method": m, "pair": where,
                                "configuration": fmt_config({k: config.get(k) for k in knobs if k in config}),
                                "seeds": len(idx), "val top-1 (%)": Stat.of(sub.get(SELECT_METRIC, [])).mean,
                                "test top-1 (%)": Stat.of(sub.get(REPORT_METRIC, [])).mean})
    if not records:
        return Skipped(key, title, "no search trial has finished")
    frame = (pd.DataFrame.from_records(records).sort_values(["method", "pair", "val top-1 (%)"],
                                                            ascending=[True, True, False], kind="stable")
             .groupby(["method", "pair"], sort=False).head(top).reset_index(drop=True))
    frame["val top-1 (%)"] = frame["val top-1 (%)"].round(2)
    frame["test top-1 (%)"] = frame["test top-1 (%)"].round(2)
    return ListTable(key, title, f"Up to {top} configurations per method and pair, ordered by mean val/top1 over "
                     "their seeds (test top-1 shown for reference; it is never used to choose).", frame)


LAYOUTS: tuple[Callable[[Study], AnyTable | Skipped], ...] = (
    best_per_method, table1_methods_by_pair, table2_connector_depth, table3_ablation, table4_imagenet,
    table5_teacher_head, online_vs_offline, ckd_budget, search_top_configs,
)


def build_tables(study: Study) -> list[AnyTable | Skipped]:
    """Every layout for the study: a table where it has the data, a ``Skipped`` with the reason where not."""
    out: list[AnyTable | Skipped] = []
    for layout in LAYOUTS:
        try:
            out.append(layout(study))
        except Exception as exc:  # noqa: BLE001 - one broken layout must not cost the whole report
            name = layout.__name__
            out.append(Skipped(name, name.replace("_", " "), f"could not be built: {type(exc).__name__}: {exc}"))
    return out
