"""Figures (matplotlib, Agg backend, PNG) drawn from a study's per-epoch history and its Optuna storage.

Curves are the mean over seeds with a band of ± one standard deviation (where at least two seeds reached that
epoch). Lines are grouped per method; a method that varies exactly one knob (connector depth, alpha_ce, ...)
gets one line per knob value (the paper's Figures 2 and 3); a method searched over several knobs shows the
configuration selected on validation. Each builder returns ``FigureResult`` or ``Skipped`` with the reason.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .load import Study, _hashable  # noqa: E402
from .tables import (  # noqa: E402
    REPORT_METRIC,
    SELECT_METRIC,
    Skipped,
    Stat,
    cell_trials,
    fmt_config,
    ordered_methods,
    pair_label,
    select,
    study_pairs,
    trial_config,
)

MAX_LINES = 10
"""Most lines per panel; more groups than this are cut to the best ones on validation (noted in the caption)."""

BOUND_TERMS = {"bound/teacher_err": "teacher error", "bound/student_err": "student error",
               "bound/delta1": "Δ1 (student head vs teacher head)", "bound/delta2": "Δ2 (teacher head: student vs "
               "teacher features)", "bound/rhs": "bound: teacher err + Δ1 + Δ2"}
SC_TERMS = {"sc/labels": "labels", "sc/random_labels": "random labels", "sc/offline_teacher": "offline teacher",
            "sc/online_teacher": "online teacher"}


@dataclass
class FigureResult:
    key: str
    title: str
    caption: str
    path: Path


@dataclass
class Group:
    label: str
    trial_ids: list[str]
    detail: str = ""


# -- grouping -------------------------------------------------------------------------------------------------
def _usable(study: Study) -> pd.DataFrame:
    trials = study.trials
    if trials.empty:
        return trials
    return trials[(trials["state"] != "errored") & (trials["n_reports"] > 0)]


def curve_groups(study: Study, teacher: Any, student: Any) -> list[Group]:
    """The lines for one pair: per method, split by its single varying knob or reduced to the selected config."""
    trials = _usable(study)
    groups: list[Group] = []
    for method in ordered_methods(trials):
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
        if len(varying) == 1 and len(distinct) <= MAX_LINES:
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


def _pairs(study: Study) -> list[tuple[Any, Any]]:
    trials = _usable(study)
    if trials.empty:
        return []
    return study_pairs(trials) or [(None, None)]


def _pair_suffix(pairs: Sequence[tuple[Any, Any]], i: int) -> tuple[str, str]:
    if len(pairs) <= 1:
        t, s = pairs[0] if pairs else (None, None)
        return "", (f" — {pair_label(t, s)}" if s is not None else "")
    t, s = pairs[i]
    return f"_{i + 1}", f" — {pair_label(t, s)}"


def _curve(history: pd.DataFrame, ids: Sequence[str], metric: str) -> pd.DataFrame:
    """Per epoch: mean, std (ddof 1) and count of ``metric`` over the given trials."""
    if metric not in history.columns:
        return pd.DataFrame(columns=["epoch", "mean", "std", "n"])
    rows = history[history["trial_id"].isin(list(ids))][["trial_id", "epoch", metric]].copy()
    rows[metric] = pd.to_numeric(rows[metric], errors="coerce")
    rows = rows.dropna(subset=[metric])
    if rows.empty:
        return pd.DataFrame(columns=["epoch", "mean", "std", "n"])
    agg = rows.groupby("epoch")[metric].agg(["mean", "std", "count"]).reset_index()
    return agg.rename(columns={"count": "n"}).sort_values("epoch")


def _plot_band(ax: Any, curve: pd.DataFrame, label: str, color: Any, linestyle: str = "-") -> bool:
    if curve.empty:
        return False
    x, m = curve["epoch"].astype(float), curve["mean"].astype(float)
    ax.plot(x, m, linestyle=linestyle, marker="o" if len(curve) < 12 else None, markersize=3, color=color,
            label=label)
    band = curve[curve["n"] >= 2]
    if not band.empty:
        ax.fill_between(band["epoch"].astype(float), band["mean"] - band["std"], band["mean"] + band["std"],
                        color=color, alpha=0.2, linewidth=0)
    return True


def _limit(groups: list[Group], study: Study) -> tuple[list[Group], str]:
    if len(groups) <= MAX_LINES:
        return groups, ""

    def score(g: Group) -> float:
        vals = study.trials[study.trials["trial_id"].isin(g.trial_ids)].get(SELECT_METRIC)
        s = Stat.of(vals if vals is not None else [])
        return s.mean if s.n else -math.inf

    kept = sorted(groups, key=score, reverse=True)[:MAX_LINES]
    return kept, f" Showing the {MAX_LINES} best of {len(groups)} groups on val/top1."


def _details(groups: Sequence[Group]) -> str:
    return "".join(f" {g.detail}" for g in groups if g.detail)


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Any, out_dir: Path, key: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{key}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _colors(n: int) -> list[Any]:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


# -- figures --------------------------------------------------------------------------------------------------
def accuracy_curves(study: Study, out_dir: Path) -> list[FigureResult | Skipped]:
    """Train and validation top-1 against epoch, one line per method or knob value (Figures 2 and 3)."""
    title = "Top-1 accuracy vs epoch"
    if study.history.empty or "val/top1" not in study.history.columns:
        return [Skipped("accuracy_curves", title, "no trial has reported val/top1 yet")]
    out: list[FigureResult | Skipped] = []
    pairs = _pairs(study)
    for i, (t, s) in enumerate(pairs):
        suffix, where = _pair_suffix(pairs, i)
        groups, cut = _limit(curve_groups(study, t, s), study)
        if not groups:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        colors = _colors(len(groups))
        for ax, metric, name in zip(axes, ("train/top1", "val/top1"), ("train (augmented batches)", "validation")):
            drawn = False
            for g, c in zip(groups, colors):
                drawn |= _plot_band(ax, _curve(study.history, g.trial_ids, metric), f"{g.label} (n={len(g.trial_ids)})",
                                    c)
            ax.set_title(f"{name} top-1")
            _epoch_axis(ax)
            ax.grid(alpha=0.3)
            if not drawn:
                ax.text(0.5, 0.5, f"no {metric} reported", ha="center", va="center", transform=ax.transAxes)
        axes[0].set_ylabel("top-1 accuracy (%)")
        axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="method (seeds)")
        fig.suptitle(f"{title}{where}")
        key = f"accuracy_curves{suffix}"
        out.append(FigureResult(key, f"{title}{where}", "Mean over seeds (n trials per line), band ± 1 std over "
                                f"seeds.{cut}{_details(groups)}", _save(fig, out_dir, key)))
    return out or [Skipped("accuracy_curves", title, "no trial with reported epochs")]


def _panels(study: Study, out_dir: Path, key: str, title: str, metrics: dict[str, str], ylabel: str,
            caption: str, need: str) -> list[FigureResult | Skipped]:
    """One panel per group (method / knob value), one line per metric: loss terms, bound terms, SC."""
    present = [m for m in metrics if m in study.history.columns and
               pd.to_numeric(study.history[m], errors="coerce").notna().any()]
    if not present:
        return [Skipped(key, title, f"no trial reported {need}")]
    out: list[FigureResult | Skipped] = []
    pairs = _pairs(study)
    for i, (t, s) in enumerate(pairs):
        suffix, where = _pair_suffix(pairs, i)
        groups, cut = _limit(curve_groups(study, t, s), study)
        groups = [g for g in groups if any(not _curve(study.history, g.trial_ids, m).empty for m in present)]
        if not groups:
            continue
        ncols = min(3, len(groups))
        nrows = math.ceil(len(groups) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
        colors = _colors(len(present))
        for ax, g in zip(axes.flat, groups):
            for m, c in zip(present, colors):
                _plot_band(ax, _curve(study.history, g.trial_ids, m), metrics[m], c,
                           linestyle="--" if m in ("train/loss", "bound/rhs") else "-")
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
        fig.tight_layout()
        fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(3, len(handles)), fontsize=8)
        name = f"{key}{suffix}"
        out.append(FigureResult(name, f"{title}{where}", caption + cut + _details(groups), _save(fig, out_dir, name)))
    return out or [Skipped(key, title, f"no trial reported {need}")]


def loss_curves(study: Study, out_dir: Path) -> list[FigureResult | Skipped]:
    """The weighted loss terms and their sum against epoch, per method."""
    terms = sorted(c for c in study.history.columns if str(c).startswith("train/loss_"))
    metrics = {"train/loss": "total (sum of terms)", **{t: t[len("train/loss_"):] for t in terms}}
    return _panels(study, out_dir, "loss_terms", "Training loss terms vs epoch", metrics,
                   "loss (mean per example, weighted)", "Each term as it enters the loss (already weighted); mean "
                   "over seeds, band ± 1 std.", "train/loss")


def bound_curves(study: Study, out_dir: Path) -> list[FigureResult | Skipped]:
    """The error-bound terms (teacher error, Δ1, Δ2, student error, right-hand side) against epoch."""
    return _panels(study, out_dir, "bound_terms", "Error-bound terms vs epoch (validation split)", BOUND_TERMS,
                   "rate (%)", "Theorem 1: student error ≤ teacher error + Δ1 + Δ2 (top-1 rates on the validation "
                   "split); mean over seeds, band ± 1 std. Missing Δ terms were not defined for that method.",
                   "bound/* terms")


def sc_curves(study: Study, out_dir: Path) -> list[FigureResult | Skipped]:
    """Adjusted supervision complexity of the four targets against epoch."""
    return _panels(study, out_dir, "supervision_complexity", "Supervision complexity vs epoch", SC_TERMS,
                   "adjusted supervision complexity", "sqrt(SC · tr K)/n of each target on the student's NTK at "
                   "that epoch (lower = easier to fit); mean over seeds, band ± 1 std.", "sc/* terms")


def budget_curve(study: Study, out_dir: Path) -> list[FigureResult | Skipped]:
    """Test top-1 against teacher-call budget per method (CKD and its baselines)."""
    key, title = "budget_accuracy", "Test top-1 vs teacher-call budget"
    trials = study.trials
    col = "config/teacher_budget"
    if trials.empty or col not in trials.columns:
        return [Skipped(key, title, "no trial has a teacher_budget")]
    done = trials[trials["completed"].astype(bool) & (trials["state"] != "errored")]
    done = done[[v is not None and not (isinstance(v, float) and math.isnan(v)) for v in done[col]]]
    if done.empty or REPORT_METRIC not in done.columns:
        return [Skipped(key, title, "no finished trial has a teacher_budget")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
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


def search_figures(study: Study, out_dir: Path) -> list[FigureResult | Skipped]:
    """Per Optuna study in ``optuna.db``: optimization history, parameter importances, value vs each parameter."""
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
    fig, ax = plt.subplots(figsize=(7, 4.5))
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
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(names) + 2))
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
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
    fig.tight_layout()
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


FIGURES: tuple[Callable[[Study, Path], list[FigureResult | Skipped]], ...] = (
    accuracy_curves, loss_curves, bound_curves, sc_curves, budget_curve, search_figures,
)


def build_figures(study: Study, out_dir: str | Path) -> list[FigureResult | Skipped]:
    """Every figure the study has data for, as PNGs in ``out_dir``; a ``Skipped`` with the reason for the rest."""
    out_dir = Path(out_dir)
    out: list[FigureResult | Skipped] = []
    for builder in FIGURES:
        try:
            out.extend(builder(study, out_dir))
        except Exception as exc:  # noqa: BLE001 - one broken figure must not cost the whole report
            plt.close("all")
            name = builder.__name__
            out.append(Skipped(name, name.replace("_", " "), f"could not be drawn: {type(exc).__name__}: {exc}"))
    return out
