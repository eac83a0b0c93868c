"""Figures (matplotlib, Agg backend, PNG) drawn from a study's per-epoch history and its Optuna storage.

Curves are the mean over seeds with a band of ± one standard deviation (where at least two seeds reached that
epoch). Lines are grouped per method; a method that varies exactly one knob (connector depth, alpha_ce, ...)
gets one line per knob value (the paper's Figures 2 and 3); a method searched over several knobs shows the
configuration selected on validation. No method with data is ever left out of a figure: when the knob
values would make more than ``MAX_LINES`` lines, such methods collapse to their selected configuration.
The comparison itself is drawn from the final numbers: per pair, each method's test top-1 (mean, seeds, the
paper's number), and a methods x pairs heatmap of the difference to a baseline method.

The history is grouped by trial once per report (``Curves``) and each figure is laid out once, with fixed
margins, when it is saved. Each builder returns ``FigureResult`` or ``Skipped`` with the reason.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from study import layout

from . import paper
from .load import Study, _hashable
from .tables import (
    REPORT_METRIC,
    SELECT_METRIC,
    TEACHER_ONLY,
    Skipped,
    cell_trials,
    finished,
    fmt_config,
    ordered_methods,
    select,
    study_pairs,
    trial_config,
)

MAX_LINES = 10
"""Most lines per panel before methods split by a knob collapse to their selected configuration."""

BASELINES = ("kd", "ce")
"""The heatmap's baseline when none is chosen: the first of these the study ran (else its first method)."""

BOUND_TERMS = dict(zip(layout.BOUND_TERMS, ("teacher error", "student error", "Δ1 (student head vs teacher head)",
                                             "Δ2 (teacher head: student vs teacher features)",
                                             "bound: teacher err + Δ1 + Δ2")))
SC_TERMS = dict(zip(layout.SC_TERMS, ("labels", "random labels", "offline teacher", "online teacher")))

DPI = 110
_FAST = {"axes.titley": 1.0, "axes.titlepad": 5.0}
"""A fixed title position: matplotlib otherwise measures every axis' tick labels to place each title."""


@dataclass
class FigureResult:
    key: str
    title: str
    caption: str
    path: Path
    shown: tuple[str, ...] = ()
    """What the figure draws, one entry per line or panel (e.g. method labels): for readers and tests."""


@dataclass
class Group:
    label: str
    trial_ids: list[str]
    detail: str = ""


# -- the history, grouped once --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Curve:
    """One line: per epoch the mean, the std (ddof 1, NaN for one value) and the count over the group's trials."""

    epoch: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray

    @property
    def empty(self) -> bool:
        return len(self.epoch) == 0


EMPTY = Curve(np.array([]), np.array([]), np.array([]), np.array([]))


def _with_init_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``sc_init/*`` values (measured before the first epoch, reported with it) as ``sc/*`` rows at epoch 0,
    so every supervision-complexity curve starts at initialisation."""
    init = [c for c in frame.columns if str(c).startswith(layout.SC_INIT_PREFIX)]
    if not init:
        return frame
    rows = frame.loc[frame[init].notna().any(axis=1), ["trial_id", *init]].drop_duplicates("trial_id", keep="last")
    rows = rows.rename(columns={c: "sc/" + str(c)[len(layout.SC_INIT_PREFIX):] for c in init}).assign(epoch=0.0)
    return pd.concat([rows, frame.drop(columns=init)], ignore_index=True)


@dataclass
class Curves:
    """The study's history indexed by trial once; per-group statistics of every metric computed once.

    Also what the figure builders share: the usable trials, the lines of each pair and the chosen baseline.
    """

    study: Study
    baseline: str | None = None
    _frame: pd.DataFrame = field(init=False, repr=False)
    _rows: dict[str, np.ndarray] = field(init=False, repr=False)
    _stats: dict[tuple[str, ...], dict[str, Curve]] = field(default_factory=dict, init=False, repr=False)
    _finals: dict[tuple[Any, Any], list[Final]] = field(default_factory=dict, init=False, repr=False)
    _groups: dict[tuple[Any, Any], list[Group]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        history = self.study.history
        self.metrics = [c for c in history.columns if c not in ("trial_id", "epoch")]
        numeric = history[self.metrics].apply(pd.to_numeric, errors="coerce") if self.metrics else history[[]]
        self._frame = pd.concat([history[["trial_id", "epoch"]].reset_index(drop=True),
                                 numeric.reset_index(drop=True)], axis=1)
        self._frame["epoch"] = pd.to_numeric(self._frame["epoch"], errors="coerce")
        self._frame = _with_init_rows(self._frame)
        self.metrics = [c for c in self._frame.columns if c not in ("trial_id", "epoch")]
        self._rows = {str(k): v for k, v in self._frame.groupby("trial_id", sort=False).indices.items()}
        trials = self.study.trials
        self.usable = trials if trials.empty else trials[(trials["state"] != "errored") & (trials["n_reports"] > 0)]

    def present(self, metric: str) -> bool:
        return metric in self._frame.columns and bool(self._frame[metric].notna().any())

    def _stats_of(self, ids: Sequence[str]) -> dict[str, Curve]:
        key = tuple(ids)
        if key not in self._stats:
            parts = [self._rows[t] for t in ids if t in self._rows]
            out: dict[str, Curve] = {}
            if parts and self.metrics:
                rows = self._frame.iloc[np.concatenate(parts)]
                grouped = rows.groupby("epoch")[self.metrics]
                mean, std, count = grouped.mean(), grouped.std(), grouped.count()
                epochs = mean.index.to_numpy(dtype=float)
                for metric in self.metrics:
                    n = count[metric].to_numpy()
                    keep = n > 0
                    if keep.any():
                        out[metric] = Curve(epochs[keep], mean[metric].to_numpy()[keep], std[metric].to_numpy()[keep],
                                            n[keep])
            self._stats[key] = out
        return self._stats[key]

    def curve(self, ids: Sequence[str], metric: str) -> Curve:
        """Per epoch: mean, std (ddof 1) and count of ``metric`` over the given trials."""
        return self._stats_of(ids).get(metric, EMPTY)

    def has_data(self, group: Group, metrics: Sequence[str]) -> bool:
        return any(not self.curve(group.trial_ids, m).empty for m in metrics)

    def finals(self, teacher: Any, student: Any) -> list[Final]:
        """``final_numbers_of`` the finished trials for one pair, computed once for both final-number figures."""
        key = (teacher, student)
        if key not in self._finals:
            self._finals[key] = final_numbers_of(finished(self.study.trials), teacher, student)
        return self._finals[key]

    def groups(self, teacher: Any, student: Any) -> list[Group]:
        """The lines of one pair: every method with data; knob splits only while they fit in ``MAX_LINES``."""
        key = (teacher, student)
        if key not in self._groups:
            groups = curve_groups(self.usable, teacher, student, split_knobs=True)
            if len(groups) > MAX_LINES:
                groups = curve_groups(self.usable, teacher, student, split_knobs=False)
            self._groups[key] = groups
        return self._groups[key]

    def pairs(self) -> list[tuple[Any, Any]]:
        if self.usable.empty:
            return []
        return study_pairs(self.usable) or [(None, None)]


def curve_groups(trials: pd.DataFrame, teacher: Any, student: Any, split_knobs: bool = True) -> list[Group]:
    """The lines for one pair: per method, split by its single varying knob or reduced to the selected config."""
    groups: list[Group] = []
    for method in ordered_methods(trials) if not trials.empty else []:
        own = cell_trials(trials, method, teacher, student)
        if own.empty:
            continue
        configs = [trial_config(r) for _, r in own.iterrows()]
        keys = [_hashable(c) for c in configs]
        distinct = list(dict.fromkeys(keys))
        if len(distinct) == 1:
            groups.append(Group(method, list(own["trial_id"])))
            continue
        varying = sorted({k for c in configs for k in c if len({_hashable(x.get(k)) for x in configs}) > 1})
        if split_knobs and len(varying) == 1 and len(distinct) <= MAX_LINES:
            knob = varying[0]
            values = sorted({c.get(knob) for c in configs}, key=lambda v: (v is None, str(v) if not isinstance(
                v, int | float) else f"{float(v):020.6f}"))
            for value in values:
                ids = [tid for tid, c in zip(own["trial_id"], configs) if c.get(knob) == value]
                groups.append(Group(f"{method} {fmt_config({knob: value})}", ids))
            continue
        sel = select(own)
        if sel is not None:
            groups.append(Group(f"{method} (selected on val)", sel.trial_ids,
                                f"{method}: selected on val/top1 among {sel.n_configs} configurations: "
                                f"{fmt_config(sel.knobs)}."))
        else:
            biggest = max(distinct, key=keys.count)
            ids = [tid for tid, k in zip(own["trial_id"], keys) if k == biggest]
            groups.append(Group(f"{method} (most-run configuration)", ids,
                                f"{method}: no configuration has finished yet; showing the one with most trials."))
    return groups


def _pair_suffix(pairs: Sequence[tuple[Any, Any]], i: int) -> tuple[str, str]:
    if len(pairs) <= 1:
        t, s = pairs[0] if pairs else (None, None)
        return "", (f" — {layout.pair_display(t, s)}" if s is not None else "")
    t, s = pairs[i]
    return f"_{i + 1}", f" — {layout.pair_display(t, s)}"


def _plot_band(ax: Any, curve: Curve, label: str, color: Any, linestyle: str = "-") -> bool:
    if curve.empty:
        return False
    ax.plot(curve.epoch, curve.mean, linestyle=linestyle, marker="o" if len(curve.epoch) < 12 else None, markersize=3,
            color=color, label=label)
    band = curve.n >= 2
    if band.any():
        ax.fill_between(curve.epoch[band], (curve.mean - curve.std)[band], (curve.mean + curve.std)[band], color=color,
                        alpha=0.2, linewidth=0)
    return True


def _details(groups: Sequence[Group]) -> str:
    return "".join(f" {g.detail}" for g in groups if g.detail)


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=6))


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, *, left: float = 0.8, right: float = 0.3,
            top: float = 0.7, bottom: float = 0.6, wspace: float = 0.75, hspace: float = 0.8,
            **kwargs: Any) -> tuple[Any, Any]:
    """A figure whose margins are fixed in inches: laid out once, when it is drawn (no tight_layout pass)."""
    with plt.rc_context(_FAST):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)
    inner_w = max(0.5, width - left - right)
    inner_h = max(0.5, height - top - bottom)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        wspace=wspace * ncols / inner_w if ncols > 1 else 0.2,
                        hspace=hspace * nrows / inner_h if nrows > 1 else 0.2)
    return fig, axes


def _save(fig: Any, out_dir: Path, key: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{key}.png"
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


# -- figures --------------------------------------------------------------------------------------------------
def accuracy_curves(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """Train and validation top-1 against epoch, one line per method or knob value (Figures 2 and 3)."""
    title = "Top-1 accuracy vs epoch"
    if not curves.present(layout.VAL_TOP1):
        return [Skipped("accuracy_curves", title, "no trial has reported val/top1 yet")]
    out: list[FigureResult | Skipped] = []
    pairs = curves.pairs()
    metrics = (layout.TRAIN_TOP1, layout.VAL_TOP1)
    for i, (t, s) in enumerate(pairs):
        suffix, where = _pair_suffix(pairs, i)
        groups = [g for g in curves.groups(t, s) if curves.has_data(g, metrics)]
        if not groups:
            continue
        legend_w = 3.2
        fig, axes = _figure(12 + legend_w, 4.8, 1, 2, right=legend_w, sharey=True, wspace=0.3)
        colors = _colors(len(groups))
        for ax, metric, name in zip(axes[0], metrics, ("train (augmented batches)", "validation")):
            drawn = False
            for g, c in zip(groups, colors):
                drawn |= _plot_band(ax, curves.curve(g.trial_ids, metric), f"{g.label} (n={len(g.trial_ids)})", c)
            ax.set_title(f"{name} top-1")
            _epoch_axis(ax)
            ax.grid(alpha=0.3)
            if not drawn:
                ax.text(0.5, 0.5, f"no {metric} reported", ha="center", va="center", transform=ax.transAxes)
        axes[0][0].set_ylabel("top-1 accuracy (%)")
        axes[0][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="method (seeds)")
        fig.suptitle(f"{title}{where}")
        key = f"accuracy_curves{suffix}"
        out.append(FigureResult(key, f"{title}{where}", "Mean over seeds (n trials per line), band ± 1 std over "
                                f"seeds.{_details(groups)}", _save(fig, out_dir, key), tuple(g.label for g in groups)))
    return out or [Skipped("accuracy_curves", title, "no trial with reported epochs")]


def _panels(curves: Curves, out_dir: Path, key: str, title: str, metrics: dict[str, str], ylabel: str,
            caption: str, need: str) -> list[FigureResult | Skipped]:
    """One panel per group (method / knob value), one line per metric: loss terms, bound terms, SC."""
    present = [m for m in metrics if curves.present(m)]
    if not present:
        return [Skipped(key, title, f"no trial reported {need}")]
    out: list[FigureResult | Skipped] = []
    pairs = curves.pairs()
    for i, (t, s) in enumerate(pairs):
        suffix, where = _pair_suffix(pairs, i)
        groups = [g for g in curves.groups(t, s) if curves.has_data(g, present)]  # filter first, never cut
        if not groups:
            continue
        ncols = min(3, len(groups))
        nrows = math.ceil(len(groups) / ncols)
        legend_h = 0.25 * math.ceil(len(present) / 3) + 0.4
        fig, axes = _figure(5.2 * ncols, 3.4 * nrows + 0.7 + legend_h, nrows, ncols, bottom=0.6 + legend_h,
                            top=0.75)
        colors = _colors(len(present))
        for ax, g in zip(axes.flat, groups):
            for m, c in zip(present, colors):
                _plot_band(ax, curves.curve(g.trial_ids, m), metrics[m], c,
                           linestyle="--" if m in (layout.TRAIN_LOSS, "bound/rhs") else "-")
            ax.set_title(f"{g.label} (n={len(g.trial_ids)})", fontsize=9)
            _epoch_axis(ax)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        handles: dict[str, Any] = {}
        for ax in axes.flat:  # one legend for all panels (same metrics, same colours), below them
            for handle, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, handle)
        fig.suptitle(f"{title}{where}")
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)), fontsize=8,
                   frameon=False)
        name = f"{key}{suffix}"
        out.append(FigureResult(name, f"{title}{where}", caption + _details(groups), _save(fig, out_dir, name),
                                tuple(g.label for g in groups)))
    return out or [Skipped(key, title, f"no trial reported {need}")]


def loss_curves(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """The weighted loss terms and their sum against epoch, per method."""
    terms = sorted(c for c in curves.metrics if str(c).startswith(layout.LOSS_TERM_PREFIX))
    metrics = {layout.TRAIN_LOSS: "total (sum of terms)", **{t: t[len(layout.LOSS_TERM_PREFIX):] for t in terms}}
    return _panels(curves, out_dir, "loss_terms", "Training loss terms vs epoch", metrics,
                   "loss (mean per example, weighted)", "Each term as it enters the loss (already weighted); mean "
                   "over seeds, band ± 1 std.", "train/loss")


def bound_curves(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """The error-bound terms (teacher error, Δ1, Δ2, student error, right-hand side) against epoch."""
    return _panels(curves, out_dir, "bound_terms", "Error-bound terms vs epoch (validation split)", BOUND_TERMS,
                   "rate (%)", "Theorem 1: student error ≤ teacher error + Δ1 + Δ2 (top-1 rates on the validation "
                   "split); mean over seeds, band ± 1 std. Missing Δ terms were not defined for that method.",
                   "bound/* terms")


def sc_curves(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """Adjusted supervision complexity of the four targets against epoch, from initialisation (epoch 0)."""
    return _panels(curves, out_dir, "supervision_complexity", "Supervision complexity vs epoch", SC_TERMS,
                   sc_axis_label(curves.usable), "sqrt(SC · tr K)/n of each target on the student's NTK at that "
                   "epoch (lower = easier to fit); epoch 0 is the student at initialisation; mean over seeds, band "
                   "± 1 std.", "sc/* terms")


def sc_axis_label(trials: pd.DataFrame) -> str:
    """The ASC axis names the kernel: with ``per_logit`` the value is the full nk x nk Gram's ASC / sqrt(k)."""
    kinds = set(trials["config/sc_kernel"].dropna().astype(str)) if "config/sc_kernel" in trials else set()
    kinds = kinds or {"per_logit"}  # the declared default
    label = f"adjusted supervision complexity ({', '.join(sorted(kinds))} kernel)"
    if "per_logit" in kinds:
        label += "\nper_logit: full nk×nk Gram's ASC / √k"
    return label


def _measured_epochs(curves: Curves, group: Group, metrics: Sequence[str]) -> list[float]:
    """Student epochs with a value of every metric: initialisation (0) and the last measurement."""
    common: set[float] | None = None
    for m in metrics:
        epochs = set(curves.curve(group.trial_ids, m).epoch.tolist())
        common = epochs if common is None else common & epochs
    ordered = sorted(common or ())
    return sorted({ordered[0], ordered[-1]}) if ordered else []


def _sc_sweep(curves: Curves, out_dir: Path, key: str, title: str, metrics: dict[str, float], xlabel: str,
              caption: str, log2: bool) -> list[FigureResult | Skipped]:
    """One panel per group: ASC against a teacher-side variable (x), one line per student epoch measured."""
    out: list[FigureResult | Skipped] = []
    pairs = curves.pairs()
    names = sorted(metrics, key=metrics.get)
    for i, (t, s) in enumerate(pairs):
        suffix, where = _pair_suffix(pairs, i)
        groups = [g for g in curves.groups(t, s) if _measured_epochs(curves, g, names)]
        if not groups:
            continue
        ncols = min(3, len(groups))
        nrows = math.ceil(len(groups) / ncols)
        fig, axes = _figure(5.2 * ncols + 1.6, 3.6 * nrows + 0.8, nrows, ncols, right=1.9, top=0.75, left=1.0)
        for ax, g in zip(axes.flat, groups):
            epochs = _measured_epochs(curves, g, names)
            for e, color in zip(epochs, _colors(len(epochs))):
                points = [curves.curve(g.trial_ids, m) for m in names]
                ys = np.array([c.mean[c.epoch == e][0] for c in points])
                sd = np.array([c.std[c.epoch == e][0] for c in points])
                xs = np.array([metrics[m] for m in names])
                name = "student at init" if e == 0 else f"student epoch {int(e)}"
                ax.plot(xs, ys, marker="o", markersize=3, color=color, label=name)
                if np.isfinite(sd).any():
                    ax.fill_between(xs, ys - np.nan_to_num(sd), ys + np.nan_to_num(sd), color=color, alpha=0.2,
                                    linewidth=0)
            if log2:
                ax.set_xscale("log", base=2)
                ax.set_xticks(list(metrics.values()), [f"{v:g}" for v in metrics.values()])
            ax.set_title(f"{g.label} (n={len(g.trial_ids)})", fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(sc_axis_label(curves.usable[curves.usable["trial_id"].isin(g.trial_ids)])
                          if "trial_id" in curves.usable else sc_axis_label(curves.usable), fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        for ax in list(axes.flat)[len(groups):]:
            ax.axis("off")
        fig.suptitle(f"{title}{where}")
        name = f"{key}{suffix}"
        out.append(FigureResult(name, f"{title}{where}", caption + _details(groups), _save(fig, out_dir, name),
                                tuple(g.label for g in groups)))
    return out or [Skipped(key, title, "no trial measured these targets")]


def _suffix_values(curves: Curves, prefix: str) -> dict[str, float]:
    out = {}
    for m in curves.metrics:
        if str(m).startswith(prefix) and curves.present(m):
            try:
                out[m] = float(str(m)[len(prefix):])
            except ValueError:
                continue
    return out


def sc_trajectory_curves(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """ASC of each trajectory checkpoint's targets (at the trial's T) against the checkpoint's teacher epoch."""
    key, title = "sc_teacher_trajectory", "Supervision complexity of the teacher's checkpoints"
    metrics = _suffix_values(curves, layout.SC_TRAJECTORY_PREFIX)
    if not metrics:
        return [Skipped(key, title, "no trial reported sc/trajectory/* (online trials with sc_every > 0)")]
    return _sc_sweep(curves, out_dir, key, title, metrics, "teacher epoch of the checkpoint",
                     "ASC of softmax(z_t / T) of each kept teacher checkpoint on the same student kernel (the "
                     "student at initialisation and at its last measurement); mean over seeds, band ± 1 std.",
                     log2=False)


def sc_temperature_curves(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """ASC of the final teacher's softmax(z / T) against T (1, 2, 4, 8)."""
    key, title = "sc_teacher_temperature", "Supervision complexity vs teacher temperature"
    metrics = _suffix_values(curves, layout.SC_TEMPERATURE_PREFIX)
    if not metrics:
        return [Skipped(key, title, "no trial reported sc/teacher_T* (online/offline trials with sc_every > 0)")]
    return _sc_sweep(curves, out_dir, key, title, metrics, "teacher temperature T (log scale)",
                     "ASC of the final teacher's softmax(z_t / T) on the student's kernel at initialisation and at "
                     "its last measurement; mean over seeds, band ± 1 std.", log2=True)


# -- the final numbers ----------------------------------------------------------------------------------------
@dataclass
class Final:
    """One method's final test top-1 on one pair: the selected configuration's seeds and the paper's number."""

    method: str
    values: list[float]
    mean: float
    std: float
    paper: float | None


def final_numbers_of(trials: pd.DataFrame, teacher: Any, student: Any) -> list[Final]:
    """Per method (table order), the test top-1 over the seeds of the configuration selected on validation."""
    out = []
    for m in ordered_methods(trials) if not trials.empty else []:
        sel = select(cell_trials(trials, m, teacher, student))
        if sel is None or sel.report[REPORT_METRIC].n == 0:
            continue
        chosen = trials[trials["trial_id"].isin(sel.trial_ids)]
        values = [float(v) for v in pd.to_numeric(chosen[REPORT_METRIC], errors="coerce").dropna()]
        stat = sel.report[REPORT_METRIC]
        t = teacher if isinstance(teacher, str) else None
        out.append(Final(m, values, stat.mean, stat.std if stat.n > 1 else 0.0,
                         paper.table1(m, t, student if m not in TEACHER_ONLY else None)))
    return out


def final_numbers(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """Per pair: each method's test top-1, mean with ± 1 std over seeds, each seed, the paper's number."""
    key, title = "final_numbers", "Final test top-1 by method"
    trials = finished(curves.study.trials)
    if trials.empty or REPORT_METRIC not in trials.columns:
        return [Skipped(key, title, "no finished trial reported test/top1")]
    pairs = study_pairs(trials) or [(None, None)]
    out: list[FigureResult | Skipped] = []
    for i, (t, s) in enumerate(pairs):
        suffix, where = _pair_suffix(pairs, i)
        finals = curves.finals(t, s)
        if not finals:
            continue
        fig, axes = _figure(8.0, 0.34 * len(finals) + 1.5, left=1.4, right=2.3, top=0.5, bottom=0.6)
        ax = axes[0][0]
        ys = list(range(len(finals)))[::-1]
        for y, f in zip(ys, finals):
            ax.scatter(f.values, [y] * len(f.values), s=12, color="0.55", zorder=2,
                       label="seed" if y == ys[0] else None)
            ax.errorbar([f.mean], [y], xerr=[f.std], fmt="o", color="tab:blue", capsize=3, markersize=6, zorder=3,
                        label="mean ± 1 std over seeds" if y == ys[0] else None)
        marked = [(y, f.paper) for y, f in zip(ys, finals) if f.paper is not None]
        if marked:
            ax.scatter([p for _, p in marked], [y for y, _ in marked], marker="D", s=40, facecolors="none",
                       edgecolors="tab:red", linewidths=1.5, zorder=4, label="paper (Table 1)")
        ax.set_yticks(ys, [f"{f.method} (n={len(f.values)})" for f in finals])
        ax.set_xlabel("test top-1 accuracy (%)")
        ax.grid(alpha=0.3, axis="x")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        ax.set_title(f"{title}{where}", fontsize=10)
        name = f"{key}{suffix}"
        out.append(FigureResult(name, f"{title}{where}", "Test top-1 of the configuration selected on val/top1: "
                                "grey dots are seeds, blue the mean ± 1 std; red diamonds the paper's number where "
                                "it printed this cell.", _save(fig, out_dir, name), tuple(f.method for f in finals)))
    return out or [Skipped(key, title, "no finished trial reported test/top1")]


def choose_baseline(methods: Sequence[str], wanted: str | None = None) -> tuple[str | None, str]:
    """The heatmap's baseline: ``wanted`` when the study ran it, else the first of ``BASELINES``, else the first
    student method; with a note when the wanted one is absent."""
    students = [m for m in methods if m not in TEACHER_ONLY]
    if wanted and wanted in students:
        return wanted, ""
    pick = next((b for b in BASELINES if b in students), students[0] if students else None)
    note = f" {wanted} did not run in this study, so the baseline is {pick}." if wanted and pick else ""
    return pick, note


def baseline_heatmap(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """Methods x pairs: test top-1 difference to the baseline method on the same pair (paper's in brackets)."""
    key, title = "baseline_heatmap", "Test top-1 difference to the baseline"
    trials = finished(curves.study.trials)
    if trials.empty or REPORT_METRIC not in trials.columns:
        return [Skipped(key, title, "no finished trial reported test/top1")]
    baseline, note = choose_baseline(ordered_methods(trials), curves.baseline or BASELINES[0])
    pairs = study_pairs(trials) or [(None, None)]
    finals = {p: {f.method: f for f in curves.finals(*p)} for p in pairs}
    methods = [m for m in ordered_methods(trials) if m not in TEACHER_ONLY and m != baseline]
    if baseline is None or not methods:
        return [Skipped(key, title, "needs at least two student methods with finished trials")]
    diff = np.full((len(methods), len(pairs)), np.nan)
    paper_diff = np.full_like(diff, np.nan)
    for j, p in enumerate(pairs):
        base = finals[p].get(baseline)
        for i, m in enumerate(methods):
            own = finals[p].get(m)
            if base is None or own is None:
                continue
            diff[i, j] = own.mean - base.mean
            if own.paper is not None and base.paper is not None:
                paper_diff[i, j] = own.paper - base.paper
    if np.isnan(diff).all():
        return [Skipped(key, title, f"no pair has both {baseline} and another method finished")]
    span = float(np.nanmax(np.abs(diff))) or 1.0
    fig, axes = _figure(1.25 * len(pairs) + 3.2, 0.42 * len(methods) + 2.6, left=1.2, right=1.6, top=0.6,
                        bottom=1.7)
    ax = axes[0][0]
    image = ax.imshow(np.ma.masked_invalid(diff), cmap="RdBu", vmin=-span, vmax=span, aspect="auto")
    for i in range(len(methods)):
        for j in range(len(pairs)):
            if np.isnan(diff[i, j]):
                continue
            text = f"{diff[i, j]:+.2f}"
            if not np.isnan(paper_diff[i, j]):
                text += f"\n({paper_diff[i, j]:+.2f})"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if abs(diff[i, j]) > 0.6 * span else "black")
    ax.set_xticks(range(len(pairs)), [layout.pair_display(t, s) for t, s in pairs], rotation=35, ha="right",
                  fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    fig.colorbar(image, ax=ax, label=f"test top-1 − {baseline} (points)", fraction=0.05, pad=0.02)
    ax.set_title(f"{title} ({baseline})", fontsize=10)
    paper_note = " In brackets: the same difference in the paper's Table 1." if not np.isnan(paper_diff).all() else ""
    return [FigureResult(key, f"{title} ({baseline})", f"Each cell: the method's mean test top-1 minus {baseline}'s "
                         "on the same pair (configurations selected on val/top1, means over seeds); blue is better "
                         f"than {baseline}, red worse, blank where either did not finish.{paper_note}{note}",
                         _save(fig, out_dir, key), tuple(methods))]


def budget_curve(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """Test top-1 against teacher-call budget per method (CKD and its baselines)."""
    key, title = "budget_accuracy", "Test top-1 vs teacher-call budget"
    trials = curves.study.trials
    col = "config/teacher_budget"
    if trials.empty or col not in trials.columns:
        return [Skipped(key, title, "no trial has a teacher_budget")]
    done = trials[trials["completed"].astype(bool) & (trials["state"] != "errored")]
    done = done[[v is not None and not (isinstance(v, float) and math.isnan(v)) for v in done[col]]]
    if done.empty or REPORT_METRIC not in done.columns:
        return [Skipped(key, title, "no finished trial has a teacher_budget")]
    fig, axes = _figure(7.5, 4.8)
    ax = axes[0][0]
    methods = ordered_methods(done)
    for m, c in zip(methods, _colors(len(methods))):
        rows = []
        for budget, sub in done[done["method"] == m].groupby(col):
            sel = select(sub)
            if sel is not None:
                stat = sel.report[REPORT_METRIC]
                rows.append((float(budget), stat.mean, stat.std if stat.n > 1 else 0.0, stat.n))
        if rows:
            rows.sort()
            ax.errorbar([r[0] for r in rows], [r[1] for r in rows], yerr=[r[2] for r in rows], marker="o",
                        capsize=3, color=c, label=f"{m} (n seeds: {', '.join(str(r[3]) for r in rows)})")
    ax.set_xlabel("teacher budget (images the teacher saw)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return [FigureResult(key, title, "Configuration selected on val/top1 at each budget; error bars ± 1 std over "
                         "seeds.", _save(fig, out_dir, key))]


# -- searches (Optuna storage) --------------------------------------------------------------------------------
def _optuna_studies(study: Study) -> list[tuple[Path, Any]]:
    if not study.optuna_dbs:
        return []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = []
    for db in study.optuna_dbs:
        url = f"sqlite:///{db}"
        for summary in optuna.get_all_study_summaries(url, include_best_trial=False):
            out.append((db, optuna.load_study(study_name=summary.study_name, storage=url)))
    return out


def search_figures(curves: Curves, out_dir: Path) -> list[FigureResult | Skipped]:
    """Per Optuna study in ``optuna.db``: optimization history, parameter importances, value vs each parameter."""
    study = curves.study
    if not study.optuna_dbs:
        return [Skipped("search", "Search figures", "no optuna.db in the study dir (not a search)")]
    try:
        studies = _optuna_studies(study)
    except Exception as exc:  # noqa: BLE001 - a locked or foreign database must not stop the report
        return [Skipped("search", "Search figures", f"could not read optuna.db: {type(exc).__name__}: {exc}")]
    out: list[FigureResult | Skipped] = []
    for i, (_, ostudy) in enumerate(studies):
        import optuna

        complete = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
        tag = f"_{i + 1}" if len(studies) > 1 else ""
        name = ostudy.study_name
        if not complete:
            out.append(Skipped(f"search_history{tag}", f"Search {name}", "no complete Optuna trial yet"))
            continue
        maximize = ostudy.direction == optuna.study.StudyDirection.MAXIMIZE
        label = _objective_name(ostudy, study.spec)
        out.append(_history_figure(ostudy, complete, maximize, out_dir, f"search_history{tag}", label))
        out.append(_importance_figure(ostudy, complete, out_dir, f"search_importance{tag}"))
        out.append(_param_figure(ostudy, complete, out_dir, f"search_params{tag}", label))
    return out or [Skipped("search", "Search figures", "optuna.db holds no study")]


def _objective_name(ostudy: Any, spec: dict[str, Any] | None = None) -> str:
    """The searched metric: Optuna's metric name, else the spec's ``metric``, else val/top1 (what studies use)."""
    names = getattr(ostudy, "metric_names", None)
    name = names[0] if names else _spec_metric(spec) or SELECT_METRIC
    return f"{name} (%)" if "top1" in name or "top5" in name else name


def _spec_metric(spec: Any) -> str | None:
    if isinstance(spec, dict):
        if isinstance(spec.get("metric"), str):
            return spec["metric"]
        for value in spec.values():
            found = _spec_metric(value)
            if found:
                return found
    return None


def _history_figure(ostudy: Any, complete: list, maximize: bool, out_dir: Path, key: str, label: str) -> FigureResult:
    numbers = [t.number for t in complete]
    values = [t.values[0] for t in complete]
    best, running = [], -math.inf if maximize else math.inf
    for v in values:
        running = max(running, v) if maximize else min(running, v)
        best.append(running)
    fig, axes = _figure(7.5, 4.8)
    ax = axes[0][0]
    ax.scatter(numbers, values, s=30, color="tab:blue", label="trial value")
    ax.step(numbers, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("Optuna trial number")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    title = f"Optimization history — {ostudy.study_name}"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return FigureResult(key, title, f"{len(complete)} complete trials, direction "
                        f"{'maximize' if maximize else 'minimize'}.", _save(fig, out_dir, key))


def _importance_figure(ostudy: Any, complete: list, out_dir: Path, key: str) -> FigureResult | Skipped:
    import optuna

    title = f"Parameter importances — {ostudy.study_name}"
    params = sorted({p for t in complete for p in t.params})
    if len(complete) < 2 or not params:
        return Skipped(key, title, f"needs at least 2 complete trials with parameters (has {len(complete)})")
    evaluators: list[tuple[str, Callable[[], Any]]] = [
        ("fANOVA", lambda: optuna.importance.FanovaImportanceEvaluator(seed=0)),
        ("PED-ANOVA", lambda: optuna.importance.PedAnovaImportanceEvaluator()),
        ("mean decrease impurity", lambda: optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)),
    ]
    results: dict[str, dict[str, float]] = {}
    failures = []
    for label, make in evaluators:
        try:
            with warnings.catch_warnings():  # few-trial studies make some evaluators warn; the caption says so
                warnings.simplefilter("ignore")
                results[label] = {k: float(v) for k, v in optuna.importance.get_param_importances(
                    ostudy, evaluator=make()).items()}
        except Exception as exc:  # noqa: BLE001 - an evaluator may refuse tiny or degenerate studies
            failures.append(f"{label}: {type(exc).__name__}")
    if not results:
        return Skipped(key, title, "Optuna's importance evaluators refused this study (" + "; ".join(failures) + ")")
    names = sorted({p for r in results.values() for p in r}, key=lambda p: -max(r.get(p, 0) for r in results.values()))
    fig, axes = _figure(7.5, 0.6 * len(names) + 2.6, left=1.9, bottom=1.4)
    ax = axes[0][0]
    width = 0.8 / len(results)
    for j, (label, res) in enumerate(results.items()):
        ax.barh([k + j * width for k in range(len(names))], [res.get(p, 0.0) for p in names], height=width,
                label=label)
    ax.set_yticks([k + width * (len(results) - 1) / 2 for k in range(len(names))], names)
    ax.invert_yaxis()
    ax.set_xlabel("importance (share of the objective's variance, sums to 1 per evaluator)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(results))
    ax.grid(alpha=0.3, axis="x")
    note = f" Not computed: {'; '.join(failures)}." if failures else ""
    return FigureResult(key, title, f"Optuna's own evaluators over {len(complete)} complete trials.{note}",
                        _save(fig, out_dir, key))


def _param_figure(ostudy: Any, complete: list, out_dir: Path, key: str, label: str) -> FigureResult | Skipped:
    title = f"Objective vs each searched parameter — {ostudy.study_name}"
    params = sorted({p for t in complete for p in t.params})
    if not params:
        return Skipped(key, title, "the search has no parameters")
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig, axes = _figure(4.8 * ncols, 3.6 * nrows + 0.6, nrows, ncols, top=0.8)
    for ax, p in zip(axes.flat, params):
        pts = [(t.params[p], t.values[0]) for t in complete if p in t.params]
        dist = next((t.distributions[p] for t in complete if p in t.distributions), None)
        xs = [x for x, _ in pts]
        if all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs):
            ax.scatter(xs, [y for _, y in pts], s=30)
            _search_range(ax, dist)
        else:
            cats = sorted({str(x) for x in xs})
            ax.scatter([cats.index(str(x)) for x in xs], [y for _, y in pts], s=30)
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(p + (" (log scale)" if getattr(dist, "log", False) else ""))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.axis("off")
    fig.suptitle(title)
    return FigureResult(key, title, "One point per complete Optuna trial.", _save(fig, out_dir, key))


def _search_range(ax: Any, dist: Any) -> None:
    """Show the whole searched range (log axis for log-scale parameters) without cluttered minor labels."""
    from matplotlib.ticker import NullFormatter

    low, high = getattr(dist, "low", None), getattr(dist, "high", None)
    if getattr(dist, "log", False):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        if low and high and low > 0:
            ax.set_xlim(low / 1.15, high * 1.15)
    elif low is not None and high is not None and high > low:
        pad = 0.04 * (high - low)
        ax.set_xlim(low - pad, high + pad)


FIGURES: tuple[Callable[[Curves, Path], list[FigureResult | Skipped]], ...] = (
    final_numbers, baseline_heatmap, accuracy_curves, loss_curves, bound_curves, sc_curves, sc_trajectory_curves,
    sc_temperature_curves, budget_curve,
    search_figures,
)


def build_figures(study: Study, out_dir: str | Path, baseline: str | None = None) -> list[FigureResult | Skipped]:
    """Every figure the study has data for, as PNGs in ``out_dir``; a ``Skipped`` with the reason for the rest.

    ``baseline``: the method the heatmap compares against (default: kd, else ce, else the first method).
    """
    out_dir = Path(out_dir)
    curves = Curves(study, baseline)
    out: list[FigureResult | Skipped] = []
    for builder in FIGURES:
        try:
            out.extend(builder(curves, out_dir))
        except Exception as exc:  # noqa: BLE001 - one broken figure must not cost the whole report
            plt.close("all")
            name = builder.__name__
            out.append(Skipped(name, name.replace("_", " "), f"could not be drawn: {type(exc).__name__}: {exc}"))
    return out
