"""Error analysis: per-code table, most missed / most spurious codes, near misses, per-note lists.

A *near miss* is a spurious predicted code that sits next to a missed gold code of the same note in
the ICD hierarchy: its ``parent`` (predicted an ancestor, e.g. I50.9's category I50 for I50.23), a
``child`` (predicted a descendant) or a ``sibling`` (same parent: predicted I50.9 for gold I50.23).
The hierarchy comes from :func:`icdcoder.ontology.get_ontology`; where it has no answer (unknown code,
system not loaded) :func:`relation` falls back to code prefixes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Mapping

import numpy as np

from icdcoder.evaluation.metrics import ScoreMatrix, _div, per_code_counts

Hierarchy = Callable[[str, str | None], str | None]  # (code, system) -> parent


def _squash(code: str) -> str:
    return code.replace(".", "").upper()


def prefix_parent(code: str) -> str | None:
    """Parent by prefix: one character shorter, never below the 3-character category."""
    s = _squash(code)
    return s[:-1] if len(s) > 3 else None


def ontology_parent() -> Hierarchy:
    """A parent function backed by the ontology, falling back to :func:`prefix_parent`."""
    from icdcoder.ontology import get_ontology

    ont = get_ontology()

    def parent(code: str, system: str | None) -> str | None:
        if system:
            try:
                p = ont.parent(code, system)
            except ValueError:  # a system name the ontology does not know ("unknown")
                p = None
            if p:
                return p
        return prefix_parent(code)

    return parent


def relation(gold: str, pred: str, system: str | None = None, parent: Hierarchy | None = None) -> str | None:
    """``"parent"``/``"child"``/``"sibling"`` when ``pred`` is that to ``gold`` in the hierarchy, else None.

    Ancestors are walked with ``parent`` (default: prefixes); compared without dots so that ontology
    and prefix answers mix. ``parent``: ``pred`` is an ancestor of ``gold``; ``child``: a descendant;
    ``sibling``: both have the same parent, or (prefix fallback) the same 3-character category.
    """
    parent = parent or (lambda c, s: prefix_parent(c))
    g, p = _squash(gold), _squash(pred)
    if g == p:
        return None

    def chain(code: str) -> list[str]:
        out, cur = [], code
        for _ in range(10):
            nxt = parent(cur, system)
            if not nxt or _squash(nxt) in out:
                break
            out.append(_squash(nxt))
            cur = nxt
        return out

    anc_g, anc_p = chain(gold), chain(pred)
    if p in anc_g or (g.startswith(p) and len(p) >= 3):
        return "parent"
    if g in anc_p or (p.startswith(g) and len(g) >= 3):
        return "child"
    if (anc_g and anc_p and anc_g[0] == anc_p[0]) or (len(g) >= 3 and len(p) >= 3 and g[:3] == p[:3]):
        return "sibling"
    return None


def per_code_table(m: ScoreMatrix, pred: np.ndarray,
                   train_counts: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per code with support or predictions: support, TP, FP, FN, precision, recall, F1."""
    tp, fp, fn = per_code_counts(m, pred)
    p, r = _div(tp, tp + fp), _div(tp, tp + fn)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    rows = []
    for j in np.flatnonzero(tp + fp + fn):
        row = {"code": m.codes[j], "support": int(tp[j] + fn[j]), "tp": int(tp[j]), "fp": int(fp[j]),
               "fn": int(fn[j]), "precision": float(p[j]), "recall": float(r[j]), "f1": float(f1[j])}
        if train_counts is not None:
            row["train_count"] = int(train_counts.get(m.codes[j], 0))
        rows.append(row)
    rows.sort(key=lambda r: (-r["support"], r["code"]))
    return rows


def per_note_lists(m: ScoreMatrix, pred: np.ndarray) -> list[dict[str, Any]]:
    """Per note: gold, predicted (ranked order), missed (gold not predicted), spurious (predicted not gold)."""
    out = []
    gi, gp = m.gold.indices, m.gold.indptr
    for i, nid in enumerate(m.ids):
        lo, hi = m.row_start[i], m.row_start[i + 1]
        predicted = [m.codes[j] for j in m.cols[lo:hi][pred[lo:hi]]]
        gold = sorted(m.codes[j] for j in gi[gp[i]:gp[i + 1]])
        ps, gs = set(predicted), set(gold)
        out.append({"id": nid, "gold": gold, "predicted": predicted, "missed": [c for c in gold if c not in ps],
                    "spurious": [c for c in predicted if c not in gs]})
    return out


def near_misses(notes: list[dict[str, Any]], systems: Mapping[str, str] | None = None,
                parent: Hierarchy | None = None) -> list[dict[str, Any]]:
    """Every (missed gold, spurious predicted) pair of a note related in the hierarchy."""
    systems = systems or {}
    out = []
    for n in notes:
        for g in n["missed"]:
            for p in n["spurious"]:
                sg, sp_ = systems.get(g), systems.get(p)
                if sg and sp_ and sg != sp_:
                    continue
                rel = relation(g, p, sg or sp_, parent)
                if rel:
                    out.append({"id": n["id"], "gold": g, "predicted": p, "relation": rel})
    return out


def error_analysis(m: ScoreMatrix, pred: np.ndarray, *, train_counts: Mapping[str, int] | None = None,
                   systems: Mapping[str, str] | None = None, top: int = 20, use_ontology: bool = True,
                   include_notes: bool = True) -> dict[str, Any]:
    """The whole analysis as one JSON-able dict."""
    table = per_code_table(m, pred, train_counts)
    notes = per_note_lists(m, pred)
    parent = ontology_parent() if use_ontology else None
    nm = near_misses(notes, systems, parent)
    pairs = Counter((x["gold"], x["predicted"], x["relation"]) for x in nm)
    missed = sorted((r for r in table if r["fn"]), key=lambda r: (-r["fn"], r["code"]))[:top]
    spurious = sorted((r for r in table if r["fp"]), key=lambda r: (-r["fp"], r["code"]))[:top]
    out: dict[str, Any] = {
        "per_code": table,
        "most_missed": [{"code": r["code"], "fn": r["fn"], "support": r["support"]} for r in missed],
        "most_spurious": [{"code": r["code"], "fp": r["fp"], "support": r["support"]} for r in spurious],
        "near_misses": {"count": len(nm), "by_relation": dict(Counter(x["relation"] for x in nm)),
                        "top_pairs": [{"gold": g, "predicted": p, "relation": rel, "count": c}
                                      for (g, p, rel), c in pairs.most_common(top)],
                        "pairs": nm},
    }
    if include_notes:
        out["notes"] = notes
    return out
