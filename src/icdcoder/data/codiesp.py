"""CodiEsp (CLEF eHealth 2020) from its distribution layout.

::

    ROOT/train/trainD.tsv   articleID<TAB>code               diagnoses (CIE-10 = ICD-10-CM)
    ROOT/train/trainP.tsv   articleID<TAB>code               procedures (ICD-10-PCS; often 4-char prefixes)
    ROOT/train/trainX.tsv   articleID<TAB>DIAGNOSTICO|PROCEDIMIENTO<TAB>code<TAB>evidence<TAB>start end[;start end]
    ROOT/train/text_files/ID.txt      Spanish text (the X offsets point here)
    ROOT/train/text_files_en/ID.txt   machine-translated English
    ROOT/dev/..., ROOT/test/...       the same; ``dev`` becomes icdcoder's ``val``

Evidence offsets index the Spanish text, so they become ``Note.spans`` only for ``lang="es"``; for
``lang="en"`` they are kept in ``metadata["evidence_es"]`` (code, Spanish quote, offsets) for reference.
Nothing in icdcoder reads them: the English file is a machine translation split one sentence per line,
and its sentences do not map one-to-one onto the Spanish ones (a plain sentence split of the Spanish
gives the same number of sentences for 194 of the 500 training notes), so the Spanish offsets cannot be
carried over without a sentence aligner.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Literal

from icdcoder.codes import CodeSystem
from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.note import Note, Span, canonical_split
from icdcoder.errors import DataError
from icdcoder.io import read_text_utf8
from icdcoder.text.validate import is_blank

Lang = Literal["es", "en"]
Kind = Literal["diagnoses", "procedures", "both"]
SPLITS = ("train", "dev", "test")
_KIND_FILES = {"diagnoses": [("D", CodeSystem.ICD10CM)], "procedures": [("P", CodeSystem.ICD10PCS)]}
_KIND_FILES["both"] = _KIND_FILES["diagnoses"] + _KIND_FILES["procedures"]
_X_KIND = {"DIAGNOSTICO": CodeSystem.ICD10CM, "PROCEDIMIENTO": CodeSystem.ICD10PCS}


def _tsv_rows(path: Path, n_fields: int, names: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Rows of a CodiEsp TSV; a wrong field count or empty field is an error naming line and field.

    A BOM is dropped (it would stick to the first article id). Lines end at ``\\n`` only, as an editor
    counts them: ``str.splitlines`` would also cut at U+2028 or U+0085 inside an evidence quote."""
    for lineno, line in enumerate(read_text_utf8(path, strip_bom=True).split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != n_fields:
            raise DataError(f"expected {n_fields} tab-separated fields ({', '.join(names)}), found {len(fields)}",
                            path=path, line=lineno)
        for name, value in zip(names, fields):
            if not value.strip():
                raise DataError("empty value", path=path, line=lineno, field=name)
        yield lineno, [f.strip() for f in fields]


def _parse_offsets(raw: str, path: Path, lineno: int) -> list[tuple[int, int]]:
    segs = []
    for part in raw.split(";"):
        bits = part.split()
        if len(bits) != 2 or not all(b.isascii() and b.isdigit() for b in bits):  # "²".isdigit() is True
            raise DataError(f"offsets must be 'start end[;start end]', got {raw!r}", path=path, line=lineno,
                            field="offsets")
        start, end = int(bits[0]), int(bits[1])
        if end < start:
            raise DataError(f"offset end {end} is before start {start}", path=path, line=lineno, field="offsets")
        if end > start:  # the distribution has a few empty segments ("1320 1320"): nothing to keep
            segs.append((start, end))
    return segs


def find_splits(root: str | Path) -> list[str]:
    """The CodiEsp split folders present under ``root`` (train, dev, test), in that order."""
    root = Path(root)
    return [s for s in SPLITS if (root / s / f"{s}D.tsv").exists() or (root / s / f"{s}P.tsv").exists()]


def iter_codiesp(root: str | Path, *, lang: Lang = "en", kind: Kind = "diagnoses",
                 splits: Iterable[str] | None = None, resolver: CodeResolver | None = None) -> Iterator[tuple[str, Note]]:
    """Yield ``(split, Note)`` for each CodiEsp case of each split folder found under ``root``."""
    root = Path(root)
    if lang not in ("es", "en"):
        raise ValueError(f"lang must be 'es' or 'en', not {lang!r}")
    if kind not in _KIND_FILES:
        raise ValueError(f"kind must be one of {sorted(_KIND_FILES)}, not {kind!r}")
    resolver = resolver or CodeResolver()
    present = find_splits(root)
    if not present:
        raise DataError("no CodiEsp split folder (train/, dev/, test/ with trainD.tsv ...) found", path=root)
    wanted = list(splits) if splits is not None else present
    for split in wanted:
        if split not in present:
            raise DataError(f"split folder {split!r} not found (found {present})", path=root)
        yield from _iter_split(root / split, split, lang, kind, resolver)


def _iter_split(folder: Path, split: str, lang: Lang, kind: Kind, resolver: CodeResolver) -> Iterator[tuple[str, Note]]:
    text_dir = folder / ("text_files" if lang == "es" else "text_files_en")
    if not text_dir.is_dir():
        raise DataError("text folder not found", path=text_dir)
    codes: dict[str, list[tuple[str, CodeSystem]]] = defaultdict(list)
    for letter, system in _KIND_FILES[kind]:
        path = folder / f"{split}{letter}.tsv"
        if not path.exists():
            raise DataError("code file not found", path=path)
        for lineno, (article, raw) in _tsv_rows(path, 2, ("articleID", "code")):
            code = resolver.resolve(raw, system, path=path, line=lineno, field="code")
            if code is not None:
                codes[article].append((code, system))

    evidence: dict[str, list[dict]] = defaultdict(list)
    xpath = folder / f"{split}X.tsv"
    wanted_systems = {s for _, s in _KIND_FILES[kind]}
    if xpath.exists():
        for lineno, (article, xkind, raw, quote, offs) in _tsv_rows(
                xpath, 5, ("articleID", "type", "code", "evidence", "offsets")):
            if xkind not in _X_KIND:
                raise DataError(f"type must be DIAGNOSTICO or PROCEDIMIENTO, got {xkind!r}", path=xpath,
                                line=lineno, field="type")
            if _X_KIND[xkind] not in wanted_systems:
                continue
            code = resolver.resolve(raw, _X_KIND[xkind], path=xpath, line=lineno, field="code")
            if code is not None:
                evidence[article].append({"code": code, "text": quote,
                                          "offsets": _parse_offsets(offs, xpath, lineno), "line": lineno})

    for txt in sorted(text_dir.glob("*.txt")):
        article = txt.stem
        text = read_text_utf8(txt)
        if is_blank(text):
            raise DataError("note text is empty", path=txt)
        note_codes = codes.pop(article, [])
        spans, meta = [], {"source": "codiesp", "lang": lang}
        ev = evidence.get(article, [])
        if lang == "es":
            gold = {c for c, _ in note_codes}
            for e in ev:
                if e["code"] not in gold:  # X lists a code the D/P file does not: keep the D/P truth
                    resolver.count("evidence_code_not_in_gold", f"{article}:{e['code']}")
                    continue
                for start, end in e["offsets"]:
                    if end > len(text):
                        raise DataError(f"offsets {start}-{end} run past the end of {txt.name} ({len(text)} chars)",
                                        path=xpath, line=e["line"], field="offsets")
                    spans.append(Span(code=e["code"], start=start, end=end))
        elif ev:
            meta["evidence_es"] = [{"code": e["code"], "text": e["text"], "offsets": e["offsets"]} for e in ev]
        yield canonical_split(split), Note.build(article, text, note_codes, spans=spans, metadata=meta)

    if codes:
        orphan = sorted(codes)[0]
        raise DataError(f"{len(codes)} article(s) have codes but no text file in {text_dir.name}/ "
                        f"(first: {orphan!r})", path=folder / f"{split}{_KIND_FILES[kind][0][0]}.tsv")
