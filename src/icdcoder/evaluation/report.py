"""Compare report of several coders: ``report.md`` and a self-contained ``report.html``.

The HTML embeds its plots as base64 PNG (matplotlib, Agg backend) and its style inline: it loads
nothing from anywhere. Without matplotlib the reports are written without plots (and say so).

Contents: the metrics table; evidence scores (when the gold has evidence spans); trap errors (when
the gold notes record traps, :mod:`traps`); paired-bootstrap significance of each run against the
previous one, or of the pairs asked for (when both come with their per-note data); micro F1 by
training-frequency bucket (bar chart); the micro precision-recall curve of each coder.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from icdcoder.data.stats import BUCKETS
from icdcoder.errors import DataError
from icdcoder.evaluation.bootstrap import METRICS as BOOT_METRICS
from icdcoder.evaluation.bootstrap import paired_bootstrap
from icdcoder.evaluation.metrics import ScoreMatrix, pr_curve
from icdcoder.io import atomic_write

TABLE_KEYS = ("micro_f1", "macro_f1", "unseen_f1", "micro_precision", "micro_recall", "macro_precision", "macro_recall",
              "macro_f1_harmonic", "micro_auc",
              "macro_auc", "micro_auprc", "p@5", "p@8", "p@15", "r@5", "r@8", "r@15", "r_precision", "map",
              "codiesp_map", "exact_match", "threshold", "n_notes", "n_codes")
# span-level evidence scores (metrics["evidence"], when the gold notes have evidence spans)
EVIDENCE_KEYS = ("evidence_precision", "evidence_recall", "evidence_f1", "codiesp_x_f1", "codes_with_evidence",
                 "n_pred_spans")


@dataclass
class RunData:
    """Per-note data of one run: its score matrix and the threshold(s) its set metrics used."""

    matrix: ScoreMatrix
    threshold: float = 0.5
    per_code: dict[str, float] = field(default_factory=dict)


Run = tuple[str, Mapping[str, Any], "RunData | ScoreMatrix | Mapping[str, Any] | None"]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _run_data(name: str, metrics: Mapping[str, Any],
              extra: Any) -> tuple[RunData | None, dict[str, list[float]] | None]:
    if extra is None:
        return None, None
    if isinstance(extra, ScoreMatrix):
        t = metrics.get("threshold")
        extra = RunData(extra, 0.5 if t is None else float(t))
    if isinstance(extra, RunData):
        return extra, pr_curve(extra.matrix)
    if isinstance(extra, Mapping) and "precision" in extra and "recall" in extra:
        return None, {"precision": list(extra["precision"]), "recall": list(extra["recall"])}
    raise TypeError(f"run {name!r}: per-note data must be RunData, ScoreMatrix, a PR curve dict or None")


def _significance(names: list[str], data: list[RunData | None], n_resamples: int, seed: int,
                  pairs: Sequence[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    index = {n: i for i, n in enumerate(names)}
    if pairs is None:
        pairs = [(names[i - 1], names[i]) for i in range(1, len(names))]
    out = []
    for name_a, name_b in pairs:
        if name_a not in index or name_b not in index:
            raise ValueError(f"significance pair ({name_a!r}, {name_b!r}) names a run that is not compared")
        a, b = data[index[name_a]], data[index[name_b]]
        row: dict[str, Any] = {"a": name_a, "b": name_b}
        if a is None or b is None or a.matrix.ids != b.matrix.ids or a.matrix.codes != b.matrix.codes:
            row["skipped"] = "needs both runs' predictions on the same notes and label space"
        else:
            row.update(paired_bootstrap(a.matrix, b.matrix, threshold_a=a.threshold, threshold_b=b.threshold,
                                        per_code_a=a.per_code or None, per_code_b=b.per_code or None,
                                        n_resamples=n_resamples, seed=seed))
        out.append(row)
    return out


# --- plots ---------------------------------------------------------------------------------------
def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def _png(fig, plt) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bucket_plot(names: list[str], metrics: list[Mapping[str, Any]], plt) -> str | None:
    buckets = [b for b, _, _ in BUCKETS]
    if not any(m.get("by_bucket") for m in metrics):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(names))
    for k, (name, m) in enumerate(zip(names, metrics)):
        bb = m.get("by_bucket") or {}
        vals = [float((bb.get(b) or {}).get("micro_f1") or 0.0) for b in buckets]
        ax.bar([x + k * width for x in range(len(buckets))], vals, width, label=name)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(buckets))])
    ax.set_xticklabels([f"{b}" for b in buckets])
    ax.set_xlabel("training frequency of the code")
    ax.set_ylabel("micro F1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("F1 by frequency bucket")
    return _png(fig, plt)


def _pr_plot(names: list[str], curves: list[dict[str, list[float]] | None], plt) -> str | None:
    if not any(curves):
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, c in zip(names, curves):
        if c:
            ax.plot(c["recall"], c["precision"], label=name, lw=1.5)
    ax.set_xlabel("recall (micro)")
    ax.set_ylabel("precision (micro)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Precision-recall curve")
    return _png(fig, plt)


# --- writers -------------------------------------------------------------------------------------
def _sig_cell(row: Mapping[str, Any], k: str) -> str:
    d = row[k]
    return f"{d['diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] p={d['p_value']:.3f}"


def _evidence_rows(metrics: list[Mapping[str, Any]]) -> list[tuple[str, list[Any]]]:
    if not any(m.get("evidence") for m in metrics):
        return []
    return [(k, [(m.get("evidence") or {}).get(k) for m in metrics]) for k in EVIDENCE_KEYS]


TRAP_ROWS = ("negated", "ruled_out", "uncertain", "family", "all")


def _trap_cell(d: Mapping[str, Any] | None, num: str, den: str) -> str:
    if not d:
        return "-"
    rate = d.get("rate")
    return f"{d.get(num, 0)}/{d.get(den, 0)}" + ("" if rate is None else f" ({rate:.3f})")


def _trap_rows(metrics: list[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """Rows of the trap table (``metrics["traps"]``, on notes that record traps: the synthetic corpus):
    errors/mentions (rate) per trap kind, then wrong siblings/opportunities (rate)."""
    if not any(m.get("traps") for m in metrics):
        return []
    rows = [(k, [_trap_cell((m.get("traps") or {}).get(k), "errors", "mentions") for m in metrics])
            for k in TRAP_ROWS]
    rows.append(("sibling", [_trap_cell((m.get("traps") or {}).get("sibling"), "count", "opportunities")
                             for m in metrics]))
    return rows


TRAP_TITLE = "Trap errors (predicted although the note says not to code it: errors/mentions (rate); " \
             "sibling: wrong siblings/opportunities)"


def training_labels_cell(m: Mapping[str, Any]) -> str | None:
    """Which splits' gold labels a run's training saw (``metrics["training_labels"]``, written by
    experiments): ``train`` for a clean run; evaluation splits are named and flagged."""
    tl = m.get("training_labels")
    if not tl:
        return None
    splits = list(dict.fromkeys([*tl.get("documents", []), *((tl.get("code_centric_target") or {}).get("splits") or [])]))
    cell = "+".join(splits) or "-"
    target = tl.get("code_centric_target") or {}
    if target.get("source") in ("ontology", "file"):
        cell += f" (targets: {target['source']})"
    return cell + (" EVALUATION LABELS" if tl.get("evaluation_labels") else "")


def _flagged(names, metrics) -> list[str]:
    return [n for n, m in zip(names, metrics) if (m.get("training_labels") or {}).get("evaluation_labels")]


def _markdown(names, metrics, sig, bucket_rows, has_plots, extra, title) -> str:
    lines = [f"# {title}", ""]
    flagged = _flagged(names, metrics)
    if flagged:
        lines += [f"> **Warning:** {', '.join(flagged)} trained with labels read from evaluation splits "
                  "(code_centric.evaluation_labels): their scores are not comparable with clean runs.", ""]
    lines += ["## Metrics", ""]
    lines.append("| metric | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for k in TABLE_KEYS:
        lines.append(f"| {k} | " + " | ".join(_fmt(m.get(k)) for m in metrics) + " |")
    if any(training_labels_cell(m) for m in metrics):
        lines.append("| labels in training | " + " | ".join(_fmt(training_labels_cell(m)) for m in metrics) + " |")
    ev = _evidence_rows(metrics)
    if ev:
        lines += ["", "## Evidence (span level, overlap with a gold span of the same code)", "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {k} | " + " | ".join(_fmt(v) for v in vals) + " |" for k, vals in ev]
    traps = _trap_rows(metrics)
    if traps:
        lines += ["", f"## {TRAP_TITLE}", "", "| trap | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {k} | " + " | ".join(vals) + " |" for k, vals in traps]
    if extra:
        lines += ["", "## Cost and errors", "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for k, vals in extra.items():
            lines.append(f"| {k} | " + " | ".join(_fmt(v) for v in vals) + " |")
    if sig:
        lines += ["", "## Significance (paired bootstrap, b - a, 95% CI, two-sided p)", "",
                  "| a | b | " + " | ".join(BOOT_METRICS) + " |", "|---|---|" + "---|" * len(BOOT_METRICS)]
        for row in sig:
            cells = [row.get("skipped", "")] * len(BOOT_METRICS) if "skipped" in row else \
                [_sig_cell(row, k) for k in BOOT_METRICS]
            lines.append(f"| {row['a']} | {row['b']} | " + " | ".join(cells) + " |")
    if bucket_rows:
        lines += ["", "## Micro F1 by training-frequency bucket", "",
                  "| bucket | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for b, vals in bucket_rows:
            lines.append(f"| {b} | " + " | ".join(_fmt(v) for v in vals) + " |")
    if not has_plots:
        lines += ["", "_Plots need matplotlib (see report.html when it is installed)._"]
    return "\n".join(lines) + "\n"


_CSS = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
        "th{background:#f0f0f0}img{max-width:100%}")


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(x)}</th>" for x in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _html(names, metrics, sig, bucket_rows, plots: dict[str, str | None], has_plt: bool, extra, title) -> str:
    t = html.escape(title)
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{t}</title>",
             f"<style>{_CSS}</style></head><body><h1>{t}</h1>"]
    flagged = _flagged(names, metrics)
    if flagged:
        parts.append(f"<p><strong>Warning:</strong> {html.escape(', '.join(flagged))} trained with labels read "
                     "from evaluation splits (code_centric.evaluation_labels): their scores are not comparable "
                     "with clean runs.</p>")
    parts.append("<h2>Metrics</h2>")
    rows = [[k] + [_fmt(m.get(k)) for m in metrics] for k in TABLE_KEYS]
    if any(training_labels_cell(m) for m in metrics):
        rows.append(["labels in training"] + [_fmt(training_labels_cell(m)) for m in metrics])
    parts.append(_html_table(["metric"] + names, rows))
    ev = _evidence_rows(metrics)
    if ev:
        parts.append("<h2>Evidence (span level, overlap with a gold span of the same code)</h2>")
        parts.append(_html_table([""] + names, [[k] + [_fmt(v) for v in vals] for k, vals in ev]))
    traps = _trap_rows(metrics)
    if traps:
        parts.append(f"<h2>{html.escape(TRAP_TITLE)}</h2>")
        parts.append(_html_table(["trap"] + names, [[k] + vals for k, vals in traps]))
    if extra:
        parts.append("<h2>Cost and errors</h2>")
        parts.append(_html_table([""] + names, [[k] + [_fmt(v) for v in vals] for k, vals in extra.items()]))
    if sig:
        parts.append("<h2>Significance (paired bootstrap, b &minus; a, 95% CI, two-sided p)</h2>")
        rows = [[r["a"], r["b"]] + ([r["skipped"]] * len(BOOT_METRICS) if "skipped" in r
                                    else [_sig_cell(r, k) for k in BOOT_METRICS]) for r in sig]
        parts.append(_html_table(["a", "b"] + list(BOOT_METRICS), rows))
    if bucket_rows:
        parts.append("<h2>Micro F1 by training-frequency bucket</h2>")
        parts.append(_html_table(["bucket"] + names, [[b] + [_fmt(v) for v in vals] for b, vals in bucket_rows]))
    for heading, key in (("F1 by frequency bucket", "buckets"), ("Precision-recall curves", "pr")):
        if plots.get(key):
            parts.append(f"<h2>{heading}</h2><img alt=\"{heading}\" src=\"data:image/png;base64,{plots[key]}\">")
    if not has_plt:
        parts.append("<p><em>Plots need matplotlib.</em></p>")
    parts.append("</body></html>\n")
    return "".join(parts)


def compare(runs: Sequence[Run], out_dir: str | Path, *, n_resamples: int = 1000, seed: int = 0,
            extra_rows: Mapping[str, Sequence[Any]] | None = None, title: str = "Coder comparison",
            pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Write ``report.md`` and ``report.html`` to ``out_dir`` (atomically); return the data behind them.

    ``extra_rows`` adds a "Cost and errors" table: one row per key, one value per run (training time,
    prediction speed, missed codes, ...). ``pairs`` ``(a, b)`` of run names choose the bootstrap
    comparisons (default: each run against the one before it).

    ``runs``: ``(name, metrics dict, per-note data)`` where the per-note data is a :class:`RunData`
    (or a bare :class:`ScoreMatrix`, thresholded at ``metrics["threshold"]``) for the PR curve and
    the bootstrap, a precomputed ``{"precision": [...], "recall": [...]}`` curve, or None.
    """
    if not runs:
        raise ValueError("nothing to compare")
    names, metrics, data, curves = [], [], [], []
    for name, m, extra in runs:
        base, k = str(name), 2
        while name in names:
            name = f"{base} ({k})"
            k += 1
        d, c = _run_data(name, m, extra)
        names.append(str(name))
        metrics.append(dict(m))
        data.append(d)
        curves.append(c)
    sig = _significance(names, data, n_resamples, seed, pairs) if len(runs) > 1 else []
    bucket_rows = []
    if any(m.get("by_bucket") for m in metrics):
        for b, _, _ in BUCKETS:
            bucket_rows.append((b, [((m.get("by_bucket") or {}).get(b) or {}).get("micro_f1") for m in metrics]))
    plt = _plt()
    plots: dict[str, str | None] = {}
    if plt is not None:
        plots["buckets"] = _bucket_plot(names, metrics, plt)
        plots["pr"] = _pr_plot(names, curves, plt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "report.md") as fh:
        fh.write(_markdown(names, metrics, sig, bucket_rows, plt is not None, extra_rows, title))
    with atomic_write(out / "report.html") as fh:
        fh.write(_html(names, metrics, sig, bucket_rows, plots, plt is not None, extra_rows, title))
    return {"runs": names, "significance": sig, "report_md": str(out / "report.md"),
            "report_html": str(out / "report.html")}


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path, *, n_resamples: int = 1000,
                 seed: int = 0, extra_rows: Mapping[str, Sequence[Any]] | None = None,
                 title: str = "Coder comparison", pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, Any]:
    """What ``icdcoder compare`` calls. Each run dir holds ``metrics.json`` (as written from
    :func:`evaluate_files`: ``data_dir``, ``split``, ``threshold``, ``codes``) and ``predictions.jsonl``.
    Runs on the same gold data are re-aligned over one common label space (the dataset's codes plus
    every run's predicted codes) so that the bootstrap pairs them note by note."""
    from icdcoder.evaluation.protocol import (build_matrix, align, load_gold, resolve_label_space,
                                              stored_thresholds)
    from icdcoder.prediction import read_predictions

    def gold_key(metrics: Mapping[str, Any]) -> tuple[str, str]:
        return str(metrics.get("data_dir") or metrics.get("gold")), str(metrics.get("split", "test"))

    loaded = []
    for d in run_dirs:
        d = Path(d)
        mpath = d / "metrics.json"
        if not mpath.exists():
            raise DataError("run folder has no metrics.json", path=d)
        try:
            metrics = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON ({e.msg})", path=mpath, line=e.lineno) from None
        ppath = d / "predictions.jsonl"
        loaded.append((d, metrics, ppath if ppath.exists() else None))
    gold_cache: dict[tuple[str, str], tuple[list, dict]] = {}
    preds_of: dict[int, list] = {}
    for k, (d, metrics, ppath) in enumerate(loaded):
        data_dir = metrics.get("data_dir") or metrics.get("gold")
        if ppath is None or not data_dir:
            continue
        key = gold_key(metrics)
        if key not in gold_cache:
            gold_cache[key] = load_gold(*key)
        preds_of[k] = read_predictions(ppath)
    # one label space per gold: dataset codes + every run's predictions on it
    spaces: dict[tuple[str, str], list[str]] = {}
    for key, (gold, manifest) in gold_cache.items():
        codes = {c for f in manifest.get("code_frequencies", {}).values() for c in f}
        codes |= {c for n in gold for c in n.codes}
        for k, (d, metrics, _) in enumerate(loaded):
            if k in preds_of and gold_key(metrics) == key:
                codes |= {c.code for p in preds_of[k] for c in p.codes}
        spaces[key] = sorted(codes)
    runs: list[Run] = []
    for k, (d, metrics, ppath) in enumerate(loaded):
        extra = None
        if k in preds_of:
            key = gold_key(metrics)
            gold, manifest = gold_cache[key]
            aligned, _ = align(gold, preds_of[k], allow_extra=True, source=ppath)
            freqs = manifest.get("code_frequencies", {})
            train = dict(freqs.get("train", {})) if "train" in freqs else None
            codes_arg = metrics.get("codes", "all")
            space = resolve_label_space(gold, aligned, spaces[key], train, codes_arg if train is not None else "all")
            per_code = stored_thresholds(ppath)[1] if metrics.get("n_per_code_thresholds") else {}
            extra = RunData(build_matrix(gold, aligned, space), float(metrics.get("threshold", 0.5)), per_code)
        runs.append((d.name, metrics, extra))
    return compare(runs, out_dir, n_resamples=n_resamples, seed=seed, extra_rows=extra_rows, title=title,
                   pairs=pairs)
