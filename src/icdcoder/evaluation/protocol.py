"""The one evaluation protocol: align gold notes and predictions, then every metric, by bucket and system.

Alignment: predictions are matched to gold notes by id. A gold note without a prediction is an error
naming it (a coder that skips a note must say so with an empty prediction); a prediction for a note
that is not among the gold notes is an error too, unless ``allow_extra=True`` (then it is ignored and
counted in ``n_extra_predictions``) - e.g. one prediction file for several splits.

Label space (which codes count):

* ``codes="all"`` (default): ``label_space`` if given, else every gold code of the evaluated notes,
  every code with a training count and every predicted code, sorted. Including predicted codes means
  nothing a coder outputs is silently dropped: a code no split has (a hallucination) is a false
  positive. :func:`evaluate_files` uses the dataset's label space (gold codes of all its splits, as
  :meth:`Dataset.label_space`) plus the predicted codes.
* ``codes="seen"``: only codes seen in training (train count > 0), intersected with ``label_space``
  when given; other gold and predicted codes are dropped (counted in ``n_gold_outside`` /
  ``n_pred_outside``).

With an explicit label space, codes outside it are dropped and counted the same way. Note that
micro AUC/AUPRC depend on the size of the label space (unranked cells are negatives); pass the same
``label_space`` to compare them across coders (``compare_runs`` does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from icdcoder.data.note import Note
from icdcoder.data.stats import BUCKETS, bucket_of
from icdcoder.errors import DataError
from icdcoder.evaluation.metrics import ScoreMatrix, all_metrics, macro_prf, micro_prf, per_code_counts
from icdcoder.evaluation.thresholds import tune_global, tune_per_code
from icdcoder.prediction import Prediction, read_predictions

DEFAULT_THRESHOLD = 0.5  # evaluate() on in-memory predictions without a threshold
THRESHOLD_FILE = "threshold.json"
CODER_FILE = "coder.json"  # written by Coder.save; read here as plain JSON (evaluation never imports coders)
CodesArg = Literal["all", "seen"]


def _show(ids: list[str], k: int = 5) -> str:
    more = f" and {len(ids) - k} more" if len(ids) > k else ""
    return ", ".join(repr(i) for i in ids[:k]) + more


def align(gold: Sequence[Note], preds: Sequence[Prediction], *, allow_extra: bool = False,
          source: str | Path | None = None) -> tuple[list[Prediction], int]:
    """Predictions in the order of ``gold``; errors name missing (and extra) note ids."""
    seen: set[str] = set()
    for n in gold:
        if n.id in seen:
            raise DataError(f"gold note id {n.id!r} appears twice")
        seen.add(n.id)
    by_id: dict[str, Prediction] = {}
    for p in preds:
        if p.id in by_id:
            raise DataError(f"note id {p.id!r} is predicted twice", path=source)
        by_id[p.id] = p
    missing = [n.id for n in gold if n.id not in by_id]
    if missing:
        raise DataError(f"no prediction for {len(missing)} gold note(s): {_show(missing)}", path=source)
    extra = [i for i in by_id if i not in seen]
    if extra and not allow_extra:
        raise DataError(f"{len(extra)} prediction(s) for notes that are not in the gold split: {_show(extra)} "
                        "(pass allow_extra=True to ignore them)", path=source)
    return [by_id[n.id] for n in gold], len(extra)


def default_label_space(gold: Sequence[Note], preds: Sequence[Prediction],
                        train_counts: Mapping[str, int] | None = None) -> list[str]:
    codes = {c for n in gold for c in n.codes} | {c.code for p in preds for c in p.codes}
    if train_counts:
        codes |= {c for c, k in train_counts.items() if k > 0}
    return sorted(codes)


def resolve_label_space(gold: Sequence[Note], preds: Sequence[Prediction], label_space: Sequence[str] | None,
                        train_counts: Mapping[str, int] | None, codes: CodesArg) -> list[str]:
    if codes not in ("all", "seen"):
        raise ValueError(f"codes must be 'all' or 'seen', not {codes!r}")
    if label_space is not None:
        space = list(dict.fromkeys(label_space))
    else:
        space = default_label_space(gold, preds, train_counts)
    if codes == "seen":
        if train_counts is None:
            raise ValueError("codes='seen' needs train_counts")
        space = [c for c in space if train_counts.get(c, 0) > 0]
    return space


def build_matrix(gold: Sequence[Note], preds: Sequence[Prediction], codes: Sequence[str]) -> ScoreMatrix:
    """Aligned notes and predictions (same order) -> :class:`ScoreMatrix` over ``codes``."""
    return ScoreMatrix.build([n.id for n in gold], [n.codes for n in gold],
                             [[(c.code, c.score) for c in p.codes] for p in preds], codes,
                             [p.scored for p in preds])


def tune_thresholds(gold: Sequence[Note], preds: Sequence[Prediction],
                    per_code: bool = False) -> tuple[float, dict[str, float]]:
    """The global threshold (and, when asked, per-code ones) that maximise micro F1 of aligned
    ``preds`` on ``gold``, over every code either of them names."""
    codes = sorted({c for n in gold for c in n.codes} | {c.code for p in preds for c in p.codes})
    m = build_matrix(gold, preds, codes)
    threshold = float(tune_global(m).threshold)
    return threshold, dict(tune_per_code(m, threshold).per_code) if per_code else {}


def _group_metrics(m: ScoreMatrix, tp, fp, fn, keep: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"n_codes": int(keep.sum()), "support": int((tp + fn)[keep].sum())}
    out.update(micro_prf(tp[keep], fp[keep], fn[keep]))
    out["macro_f1"] = macro_prf(tp[keep], fp[keep], fn[keep])["macro_f1"]
    return out


def code_systems_of(gold: Sequence[Note], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Code -> system name, from the notes' ``code_systems`` (and ``extra``, e.g. a manifest's)."""
    out = dict(extra or {})
    for n in gold:
        for c, s in n.code_systems.items():
            out.setdefault(c, s.value)
    return out


def _infer_system(code: str) -> str:
    from icdcoder.codes import CodeFormatError, infer_system

    try:
        return infer_system(code).value
    except CodeFormatError:
        return "unknown"


def breakdowns(m: ScoreMatrix, pred: np.ndarray, train_counts: Mapping[str, int] | None,
               systems: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``by_bucket`` (training frequency; empty without ``train_counts``) and ``by_system``."""
    tp, fp, fn = per_code_counts(m, pred)
    by_bucket: dict[str, Any] = {}
    if train_counts is not None:
        b = np.array([bucket_of(int(train_counts.get(c, 0))) for c in m.codes], dtype=object)
        for name, _, _ in BUCKETS:
            by_bucket[name] = _group_metrics(m, tp, fp, fn, b == name)
    sys_arr = np.array([systems.get(c) or _infer_system(c) for c in m.codes], dtype=object)
    by_system = {s: _group_metrics(m, tp, fp, fn, sys_arr == s) for s in sorted(set(sys_arr.tolist()))}
    return by_bucket, by_system


def evaluate_matrix(m: ScoreMatrix, *, threshold: float | None = None, per_code: Mapping[str, float] | None = None,
                    train_counts: Mapping[str, int] | None = None,
                    systems: Mapping[str, str] | None = None) -> dict[str, Any]:
    t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    out = all_metrics(m, t, per_code)
    out["threshold"] = t
    if per_code:
        out["n_per_code_thresholds"] = len(per_code)
    out["unscored_notes"] = int((~m.scored).sum())
    out["n_gold_labels"] = int(m.gold.nnz)
    out["n_pred_outside"] = m.n_pred_outside
    out["n_gold_outside"] = m.n_gold_outside
    out["by_bucket"], out["by_system"] = breakdowns(m, m.predicted(t, per_code), train_counts, systems or {})
    return out


def add_code_centric(out: dict[str, Any], gold: Sequence[Note], aligned: Sequence[Prediction], threshold: float,
                     per_code: Mapping[str, float] | None) -> dict[str, Any]:
    """``unseen_f1`` (micro F1 over codes unseen in training) and, when the gold notes have evidence
    spans, ``evidence`` (span-level scores of the predictions' evidence, as CodiEsp-X)."""
    out["unseen_f1"] = ((out.get("by_bucket") or {}).get("unseen") or {}).get("micro_f1")
    if any(n.spans for n in gold):
        from icdcoder.evaluation.evidence import evidence_scores

        per = dict(per_code or {})
        out["evidence"] = evidence_scores(gold, aligned, thresholds=lambda c: per.get(c, threshold))
    return out


def add_traps(out: dict[str, Any], gold: Sequence[Note], m: ScoreMatrix, threshold: float,
              per_code: Mapping[str, float] | None, systems: Mapping[str, str],
              reference_codes: Sequence[str] | None = None) -> dict[str, Any]:
    """``traps`` (:func:`traps.trap_errors_matrix`: negated, ruled-out, uncertain and family mentions
    predicted anyway, wrong siblings) when the gold notes carry ``metadata["traps"]`` (the synthetic
    corpus); other data get no key. ``reference_codes``: the dataset's codes, which sibling
    opportunities are counted against (default: the gold codes of ``gold``)."""
    from icdcoder.evaluation.traps import has_traps, trap_errors_matrix

    if has_traps(gold):
        out["traps"] = trap_errors_matrix(gold, m, m.predicted(threshold, per_code or None), systems=systems,
                                          reference_codes=reference_codes)
    return out


def evaluate(gold: Sequence[Note], preds: Sequence[Prediction], *, threshold: float | None = None,
             label_space: list[str] | None = None, train_counts: Mapping[str, int] | None = None,
             codes: CodesArg = "all", per_code_thresholds: Mapping[str, float] | None = None,
             allow_extra: bool = False, code_systems: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Score ``preds`` against ``gold``: a flat JSON-able dict of every metric (see :mod:`metrics`).

    ``threshold`` None means 0.5. Notes whose prediction is unscored use their code set as given.
    """
    aligned, n_extra = align(gold, preds, allow_extra=allow_extra)
    space = resolve_label_space(gold, aligned, label_space, train_counts, codes)
    m = build_matrix(gold, aligned, space)
    out = evaluate_matrix(m, threshold=threshold, per_code=per_code_thresholds, train_counts=train_counts,
                          systems=code_systems_of(gold, code_systems))
    add_code_centric(out, gold, aligned, out["threshold"], per_code_thresholds)
    add_traps(out, gold, m, out["threshold"], per_code_thresholds, code_systems_of(gold, code_systems),
              label_space if label_space is not None else default_label_space(gold, [], train_counts))
    out["codes"] = codes
    out["n_extra_predictions"] = n_extra
    return out


def stored_thresholds(pred_path: str | Path) -> tuple[float | None, dict[str, float], str | None]:
    """The threshold stored beside a predictions file: ``threshold.json`` first, then ``coder.json``
    (a saved coder folder); each may hold ``threshold`` and ``per_code_thresholds``.
    Returns ``(threshold or None, per-code, the file it came from)``."""
    folder = Path(pred_path).parent
    for name in (THRESHOLD_FILE, CODER_FILE):
        f = folder / name
        if f.exists():
            try:
                obj = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON ({e.msg})", path=f, line=e.lineno) from None
            if isinstance(obj, dict) and obj.get("threshold") is not None:
                per = {k: float(v) for k, v in (obj.get("per_code_thresholds") or {}).items()}
                return float(obj["threshold"]), per, str(f)
    return None, {}, None


def load_gold(data_dir: str | Path, split: str) -> tuple[list[Note], dict[str, Any]]:
    """Only the split is read into memory; label space, train counts and systems come from the manifest."""
    from icdcoder.data.store import load_dataset

    ds = load_dataset(data_dir, splits=[split])
    return ds[split], ds.manifest


def line_threshold(pred_path: str | Path) -> tuple[float | None, str | None]:
    """The threshold written on every line of a predictions file (``icdcoder code`` output carries the
    model's ``"threshold"`` per note): ``(value, source)`` or ``(None, None)`` when the lines have none.
    Lines that disagree, or codes whose ``suggested`` flag says another threshold was used (per-code
    thresholds), are an error: no single threshold reproduces them."""
    from icdcoder.io import iter_jsonl

    value, value_line, without = None, None, None
    for lineno, obj in iter_jsonl(pred_path):
        t = obj.get("threshold") if isinstance(obj, dict) else None
        if t is None:
            if value is not None:
                raise DataError(f"no threshold on this line, but line {value_line} has one", path=pred_path,
                                line=lineno, field="threshold")
            without = without or lineno
            continue
        if without is not None:
            raise DataError(f"a threshold on this line, but none on line {without}", path=pred_path, line=lineno,
                            field="threshold")
        if value is None:
            value, value_line = float(t), lineno
        elif float(t) != value:
            raise DataError(f"threshold {t} differs from {value} on line {value_line}: the lines come from "
                            "different models; pass --threshold", path=pred_path, line=lineno, field="threshold")
        for k, c in enumerate(obj.get("codes") or []):
            if isinstance(c, dict) and "suggested" in c and "score" in c and bool(c["suggested"]) != (c["score"] >= value):
                raise DataError(f"code {c.get('code')!r} is marked suggested={c['suggested']} at score {c['score']} "
                                f"and threshold {value}: the model used per-code thresholds; pass its threshold.json "
                                "(beside the predictions) or --threshold", path=pred_path, line=lineno,
                                field=f"codes.{k}.suggested")
    return (value, f"{pred_path} (per-line threshold)") if value is not None else (None, None)


def resolve_threshold(pred_path: str | Path, threshold: float | None = None) -> tuple[float, dict[str, float], str]:
    """Which threshold scores a predictions file, and where it came from: the argument; else the
    ``threshold`` on its lines (``icdcoder code`` output); else ``threshold.json`` / ``coder.json``
    beside it. With none of them it refuses rather than guess (0.5 would be silently wrong: a tuned
    threshold is often far from it)."""
    if threshold is not None:
        return float(threshold), {}, "argument"
    t, source = line_threshold(pred_path)
    if t is not None:
        return t, {}, str(source)
    t, per_code, source = stored_thresholds(pred_path)
    if t is not None:
        return t, per_code, str(source)
    raise DataError(f"no threshold is stored in the predictions or beside them ({THRESHOLD_FILE}, {CODER_FILE}); "
                    "pass --threshold (the one tuned on validation)", path=pred_path)


def evaluate_files(data_dir: str | Path, split: str, pred_path: str | Path, threshold: float | None = None,
                   codes: CodesArg = "all", *, allow_extra: bool = False, analysis: bool = False) -> dict[str, Any]:
    """What ``icdcoder evaluate`` calls. ``threshold`` None: the one the predictions carry
    (:func:`resolve_threshold`: per-line, then ``threshold.json`` / ``coder.json`` beside them, per-code
    thresholds included); ``threshold_source`` in the result says which. The label space is the
    dataset's (every gold code of every split) plus the predicted codes; training counts come from the
    manifest. ``analysis=True`` adds the error analysis (:func:`analysis.error_analysis`) under ``"analysis"``;
    notes that carry ``metadata["traps"]`` add ``"traps"`` (:func:`add_traps`)."""
    threshold, per_code, source = resolve_threshold(pred_path, threshold)
    gold, manifest = load_gold(data_dir, split)
    preds = read_predictions(pred_path)
    aligned, n_extra = align(gold, preds, allow_extra=allow_extra, source=pred_path)
    freqs = manifest.get("code_frequencies", {})
    train_counts = dict(freqs.get("train", {})) if "train" in freqs else None
    space = sorted({c for f in freqs.values() for c in f} | {c for n in gold for c in n.codes}
                   | {c.code for p in aligned for c in p.codes})
    space = resolve_label_space(gold, aligned, space, train_counts, codes)
    m = build_matrix(gold, aligned, space)
    systems = code_systems_of(gold, manifest.get("code_system_of"))
    out = evaluate_matrix(m, threshold=threshold, per_code=per_code or None, train_counts=train_counts,
                          systems=systems)
    add_code_centric(out, gold, aligned, threshold, per_code)
    add_traps(out, gold, m, threshold, per_code, systems,
              sorted({c for f in freqs.values() for c in f} | {c for n in gold for c in n.codes}))
    out.update({"codes": codes, "n_extra_predictions": n_extra, "threshold_source": source,
                "data_dir": str(Path(data_dir).resolve()), "split": split,
                "pred_path": str(Path(pred_path).resolve())})
    if analysis:
        from icdcoder.evaluation.analysis import error_analysis

        out["analysis"] = error_analysis(m, m.predicted(threshold, per_code or None), train_counts=train_counts,
                                         systems=systems)
    return out
