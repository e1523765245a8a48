"""CodiEsp's submission format and its official MAP, so a run can be scored the shared task's way.

The CodiEsp-D/P format is a TSV without header, ``articleID<TAB>code`` per line, codes lower-case with
dots (``n44.8``, ``bw03zzz``), a note's codes in rank order. The official script (trectools,
``get_map(trec_eval=False)``) drops repeated codes (first kept), drops codes outside the task's valid
code list, ranks the rest (by code with today's trectools, in file order with the 2020 one) and
averages AP over the notes with a submitted code (see :func:`icdcoder.evaluation.metrics.codiesp_map`).

:func:`write_submission` turns predictions into that file (the codes at or above the threshold);
:func:`map_of_files` scores two such files as the official script does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping, Sequence

from icdcoder.errors import DataError
from icdcoder.evaluation.metrics import ScoreMatrix, codiesp_map
from icdcoder.io import atomic_write
from icdcoder.prediction import Prediction


def read_tsv(path: str | Path, columns: int = 2) -> dict[str, list[str]]:
    """``{article id: [code, ...]}`` in file order, codes lower-cased, repeats dropped. Lines must have
    ``columns`` tab-separated fields (the official D/P files have 2); a bad line names its number."""
    out: dict[str, list[str]] = {}
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rstrip("\r").split("\t")
        if len(parts) != columns or not parts[0].strip() or not parts[-1].strip():
            raise DataError(f"expected {columns} tab-separated fields (article id, code), got {len(parts)}",
                            path=path, line=lineno)
        codes = out.setdefault(parts[0].strip(), [])
        code = parts[-1].strip().lower()
        if code not in codes:
            codes.append(code)
    return out


def read_valid_codes(path: str | Path) -> set[str]:
    """The task's valid codes: the first column of a TSV (the official ``codiesp-D_codes.tsv``)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    return {ln.split("\t", 1)[0].strip().lower() for ln in lines if ln.strip()}


def map_of(gold: Mapping[str, Sequence[str]], submitted: Mapping[str, Sequence[str]],
           valid_codes: Collection[str] | None = None, order: str = "code") -> tuple[float | None, int]:
    """CodiEsp MAP of ``submitted`` code lists (file order) against ``gold`` code sets (lower-case codes);
    ``(MAP, notes averaged)``. Codes outside ``valid_codes`` (when given) are dropped before ranking;
    ``order`` is :func:`~icdcoder.evaluation.metrics.codiesp_map`'s (``code``: today's official figure)."""
    ids = sorted(set(gold) | set(submitted))
    ranked = []
    for i in ids:
        lst = [c for c in dict.fromkeys(submitted.get(i, [])) if valid_codes is None or c in valid_codes]
        ranked.append([(c, float(len(lst) - k)) for k, c in enumerate(lst)])  # scores keep file order
    codes = sorted({c for cs in gold.values() for c in cs} | {c for r in ranked for c, _ in r})
    m = ScoreMatrix.build(ids, [gold.get(i, []) for i in ids], ranked, codes)
    return codiesp_map(m, m.scores > -1.0, order)


def map_of_files(gold_path: str | Path, pred_path: str | Path, valid_codes_path: str | Path | None = None,
                 order: str = "code") -> tuple[float | None, int]:
    """The official figure for two CodiEsp-D/P files (and the valid-codes TSV, when given)."""
    valid = read_valid_codes(valid_codes_path) if valid_codes_path else None
    return map_of(read_tsv(gold_path), read_tsv(pred_path), valid, order)


def submission_code(code: str) -> str:
    """icdcoder's canonical code in CodiEsp's spelling: lower case, dots kept (``N44.8`` -> ``n44.8``)."""
    return code.strip().lower()


def write_submission(preds: Sequence[Prediction], path: str | Path, threshold: float,
                     per_code: Mapping[str, float] | None = None) -> int:
    """A CodiEsp-D/P TSV of the codes at or above the threshold (per code where given), in rank order;
    every code of an unscored prediction is submitted. Returns the number of lines written."""
    per = dict(per_code or {})
    k = 0
    with atomic_write(path) as fh:
        for p in preds:
            for c in p.codes:
                if not p.scored or c.score >= per.get(c.code, threshold):
                    fh.write(f"{p.id}\t{submission_code(c.code)}\n")
                    k += 1
    return k
