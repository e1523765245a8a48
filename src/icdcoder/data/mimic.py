"""MIMIC-III and MIMIC-IV discharge summaries with their ICD codes, streamed in bounded memory.

Sources (PhysioNet layout, ``.csv`` or ``.csv.gz``, found in ``root``, ``root/note`` or ``root/hosp``;
file names are matched case-insensitively):

* MIMIC-III: ``NOTEEVENTS`` (CATEGORY ``Discharge summary``; rows with ISERROR=1 dropped; a report and
  its addenda are joined per HADM_ID, report first, then addenda by CHARTDATE/CHARTTIME/file order),
  ``DIAGNOSES_ICD`` (icd9cm), ``PROCEDURES_ICD`` (icd9pcs), optional ``ADMISSIONS`` (ADMITTIME).
* MIMIC-IV: ``note/discharge`` (notes of one hadm_id joined by note_seq), ``hosp/diagnoses_icd`` and
  ``hosp/procedures_icd`` (``icd_version`` 9 -> icd9cm/icd9pcs, 10 -> icd10cm/icd10pcs; rows of the
  other version are ignored), optional ``hosp/admissions`` (admittime) and ``hosp/patients``
  (anchor_year, anchor_year_group: used only by the time split, see :func:`_anchor_times`).

One note per admission: id = hadm_id, ``patient_id`` = subject_id, ``admission_time`` = ADMITTIME in
ISO form (``2150-01-01T12:00:00``), metadata ``hadm_id``, ``subject_id``, ``n_parts``. Codes are
diagnoses then procedures, each by SEQ_NUM, normalised through a :class:`CodeResolver` (bad codes
are counted, or raise with ``strict``; results are cached per distinct raw code, so problem counts
are per distinct code).

Presets follow Edin et al. (2023, github.com/JoakimEdin/medical-coding-reproducibility):

=================  =======  =================================================================
preset             version  codes
=================  =======  =================================================================
``mimiciii_full``  3        all ICD-9 dx + proc codes (Mullenbach et al. 2018)
``mimiciii_50``    3        only the 50 codes of Mullenbach's top-50 list (Edin uses that fixed
                            list because recomputing on v1.4 gives a slightly different set)
``mimiciii_clean`` 3        codes seen in fewer than 10 admissions dropped
``mimiciv_icd9``   4        ICD-9 codes, fewer than 10 admissions dropped
``mimiciv_icd10``  4        ICD-10 codes, fewer than 10 admissions dropped
=================  =======  =================================================================

Everywhere, admissions without any (remaining) code are dropped, and code counts are taken over all
admissions that have a discharge summary and codes, before any split. The presets turn on the text
cleaning of that work (:func:`clean_text`: lower case, every run of non-alphanumerics to a space,
stand-alone numbers removed, blanks collapsed); ``clean_text=False`` keeps the raw text.

Splits: ``split_file`` (feather/parquet/csv with ``_id`` = hadm_id and ``split``) keeps only the
admissions it names; or ``own_split="stratified"|"time"`` (see :mod:`icdcoder.data.splits`); else
every note goes to split ``all``. MIMIC shifts dates per patient, so a time split on MIMIC-III orders
admissions of different patients essentially at random; on MIMIC-IV, ``hosp/patients`` (anchor year
group) is used to put admissions back on an approximate real time line.

Memory: two streaming passes over the note file. Pass 1 parses every row but keeps only metadata of
the selected rows (record index, hadm_id, subject_id, order key: a few tuples per admission), from
which code filters and splits are computed. Pass 2 re-reads the file and yields each admission as
soon as its last part has been read; only the parts of multi-part admissions (MIMIC-III reports with
addenda, which are not contiguous in NOTEEVENTS) wait in memory until their last part arrives, and
only admissions that will be emitted are buffered. The code tables (small) are read fully. Nothing
is ever written next to (or anywhere near) the raw files. Reading uses Python's csv module over 1 MiB
decoded blocks (exact line numbers in errors); pyarrow's ``open_csv`` parses about 3x faster, but it
is not the bottleneck (text cleaning, validation and Parquet writing are) and gives no line numbers.
Measured with bench/bench_prepare_mimic.py: 200k synthetic 10k-character notes, peak RSS < 1 GiB.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import itertools
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

from icdcoder.codes import CodeSystem
from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.note import Note, check_split
from icdcoder.data.splits import SplitRecord, split_records
from icdcoder.errors import DataError
from icdcoder.text.validate import is_blank

csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

TOP_50_MULLENBACH_CODES = frozenset({
    "401.9", "38.93", "428.0", "427.31", "414.01", "96.04", "96.6", "584.9", "250.00", "96.71",
    "272.4", "518.81", "99.04", "39.61", "599.0", "530.81", "96.72", "272.0", "285.9", "88.56",
    "244.9", "486", "38.91", "285.1", "36.15", "276.2", "496", "99.15", "995.92", "V58.61",
    "507.0", "038.9", "88.72", "585.9", "403.90", "311", "305.1", "37.22", "412", "33.24",
    "39.95", "287.5", "410.71", "276.1", "V45.81", "424.0", "45.13", "V15.82", "511.9", "37.23",
})


@dataclass(frozen=True)
class Preset:
    version: int
    icd_version: int = 9
    min_code_count: int | None = None
    keep_codes: frozenset[str] | None = None
    clean_text: bool = True
    split_file_name: str | None = None  # the Edin et al. split file that goes with it


PRESETS: dict[str, Preset] = {
    "mimiciii_full": Preset(3, split_file_name="mimiciii_full_splits.feather"),
    "mimiciii_50": Preset(3, keep_codes=TOP_50_MULLENBACH_CODES, split_file_name="mimiciii_50_splits.feather"),
    "mimiciii_clean": Preset(3, min_code_count=10, split_file_name="mimiciii_clean_splits.feather"),
    "mimiciv_icd9": Preset(4, icd_version=9, min_code_count=10, split_file_name="mimiciv_icd9_split.feather"),
    "mimiciv_icd10": Preset(4, icd_version=10, min_code_count=10, split_file_name="mimiciv_icd10_split.feather"),
}

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_NUMBERS = re.compile(r"(\s\d+)+\s")
_BLANKS = re.compile(r"\s+")


def _clean_regex(text: str) -> str:
    text = _NON_ALNUM.sub(" ", text.lower())
    text = _NUMBERS.sub(" ", text)
    return _BLANKS.sub(" ", text).strip()


# every ASCII character but [a-z0-9] becomes a space (A-Z are lower-cased before)
_TO_SPACE = {i: " " for i in range(128) if not (chr(i).isdigit() or "a" <= chr(i) <= "z")}


def clean_text(text: str) -> str:
    r"""Edin et al. / Mullenbach text cleaning: lower, non-alphanumerics -> space, drop numbers, collapse.

    Same result as their regexes (``[^A-Za-z0-9]+`` -> space, ``(\s\d+)+\s`` -> space, ``\s+`` -> space,
    strip), computed with ``str.translate`` and ``split`` for ASCII text (6x faster); a number stays
    when it starts or ends the text. Non-ASCII text takes the regex path.
    """
    t = text.lower()
    if not t.isascii():
        return _clean_regex(text)
    t = t.translate(_TO_SPACE)
    toks = t.split()
    if not toks:
        return ""
    lead, trail = t[0] == " ", t[-1] == " "
    if len(toks) == 1:
        return "" if toks[0].isdigit() and lead and trail else toks[0]
    first, last = toks[0], toks[-1]
    out = list(itertools.filterfalse(str.isdigit, itertools.islice(toks, 1, len(toks) - 1)))
    if not (lead and first.isdigit()):
        out.insert(0, first)
    if not (trail and last.isdigit()):
        out.append(last)
    return " ".join(out)


_clean = clean_text


@dataclass
class MimicStats:
    """What the manifest shows: admissions kept and dropped (by reason), codes dropped (by reason)."""

    rows_read: int = 0                 # note rows parsed
    parts_selected: int = 0            # discharge-summary rows used
    admissions: int = 0                # admissions with a discharge summary
    max_pending: int = 0               # most multi-part admissions buffered at once in pass 2
    notes_written: Counter = field(default_factory=Counter)   # per split
    notes_dropped: Counter = field(default_factory=Counter)   # reason -> admissions
    codes_dropped: Counter = field(default_factory=Counter)   # reason -> distinct codes
    labels_dropped: Counter = field(default_factory=Counter)  # reason -> (admission, code) pairs
    warnings: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_read": self.rows_read, "parts_selected": self.parts_selected, "admissions": self.admissions,
                "max_pending": self.max_pending,
                "notes_written": dict(self.notes_written), "notes_dropped": dict(self.notes_dropped),
                "codes_dropped": dict(self.codes_dropped), "labels_dropped": dict(self.labels_dropped),
                "warnings": dict(self.warnings)}


# --------------------------------------------------------------------------------------------- CSV


class _Csv:
    """A PhysioNet CSV (plain or gzip) read as ``(record index, first line, row)`` with exact errors."""

    def __init__(self, path: Path, required: Sequence[str], optional: Sequence[str] = ()):
        self.path = path
        self.required = list(required)
        self.optional = list(optional)
        self.col: dict[str, int] = {}

    def _lines(self, fh) -> Iterator[str]:
        """Physical lines (``\n``-terminated), decoded a 1 MiB block at a time; csv counts them."""
        rest = b""
        before = 0  # lines in the blocks already decoded
        while True:
            block = fh.read(1 << 20)
            data = rest + block if rest else block
            if not block:
                if not data:
                    return
                cut = len(data)
            else:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
            chunk, rest = data[:cut], data[cut:]
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                line = before + chunk.count(b"\n", 0, e.start) + 1
                start = chunk.rfind(b"\n", 0, e.start) + 1
                raise DataError(f"not valid UTF-8 (byte {e.start - start} of the line: "
                                f"{chunk[e.start:e.start + 1]!r})", path=self.path, line=line) from None
            before += chunk.count(b"\n")
            yield io.StringIO(text, newline="\n")
            if not block:
                return

    @contextlib.contextmanager
    def _open(self):
        try:
            fh = gzip.open(self.path, "rb") if self.path.name.lower().endswith(".gz") else open(self.path, "rb")
        except OSError as e:
            raise DataError(f"cannot open: {e.strerror or e}", path=self.path) from None
        try:
            yield fh
        finally:
            fh.close()

    def rows(self) -> Iterator[tuple[int, int, list[str]]]:
        with self._open() as fh:
            reader = csv.reader(itertools.chain.from_iterable(self._lines(fh)), strict=True)
            try:
                try:
                    header = next(reader)
                except StopIteration:
                    raise DataError("empty file (no header)", path=self.path, line=1) from None
                header = [h.strip().lstrip("\ufeff") for h in header]
                lower = {h.lower(): i for i, h in enumerate(header)}
                for name in self.required:
                    if name.lower() not in lower:
                        raise DataError(f"missing column {name!r} (has {header})", path=self.path, line=1, field=name)
                self.col = {n: lower[n.lower()] for n in self.required + self.optional if n.lower() in lower}
                width = len(header)
                index = 0
                prev_end = reader.line_num
                for row in reader:
                    start = prev_end + 1
                    prev_end = reader.line_num
                    if not row:
                        continue
                    if len(row) != width:
                        raise DataError(f"malformed row: {len(row)} fields, the header has {width}",
                                        path=self.path, line=start)
                    yield index, start, row
                    index += 1
            except csv.Error as e:
                raise DataError(f"malformed CSV ({e})", path=self.path, line=reader.line_num) from None
            except gzip.BadGzipFile as e:
                raise DataError(f"corrupt gzip file ({e})", path=self.path) from None
            except EOFError as e:
                raise DataError(f"truncated gzip file ({e})", path=self.path, line=reader.line_num) from None


def _find(root: Path, stem: str, *, required: bool = True) -> Path | None:
    names = {f"{stem}.csv.gz".lower(), f"{stem}.csv".lower()}
    for folder in (root, root / "note", root / "hosp"):
        if folder.is_dir():
            hits = sorted((p for p in folder.iterdir() if p.name.lower() in names and p.is_file()),
                          key=lambda p: not p.name.lower().endswith(".gz"))
            if hits:
                return hits[0]
    if required:
        raise DataError(f"no {stem}.csv or {stem}.csv.gz in {root}, {root / 'note'} or {root / 'hosp'}", path=root)
    return None


def _int(value: str, c: _Csv, line: int, name: str) -> int:
    try:
        return int(float(value)) if "." in value else int(value)
    except ValueError:
        raise DataError(f"expected an integer, got {value!r}", path=c.path, line=line, field=name) from None


def _iso(ts: str) -> str | None:
    ts = ts.strip()
    return ts.replace(" ", "T", 1) if ts else None


# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Layout:
    notes: str
    note_cols: tuple[str, ...]      # required
    hadm: str
    subject: str
    text: str
    dx: str
    px: str
    code_cols: tuple[str, ...]      # required in code tables
    code: str
    seq: str
    admissions: str
    admittime: str


_III = _Layout("NOTEEVENTS", ("SUBJECT_ID", "HADM_ID", "CHARTDATE", "CATEGORY", "DESCRIPTION", "ISERROR", "TEXT"),
               "HADM_ID", "SUBJECT_ID", "TEXT", "DIAGNOSES_ICD", "PROCEDURES_ICD",
               ("HADM_ID", "SEQ_NUM", "ICD9_CODE"), "ICD9_CODE", "SEQ_NUM", "ADMISSIONS", "ADMITTIME")
_IV = _Layout("discharge", ("subject_id", "hadm_id", "text"), "hadm_id", "subject_id", "text",
              "diagnoses_icd", "procedures_icd", ("hadm_id", "seq_num", "icd_code", "icd_version"),
              "icd_code", "seq_num", "admissions", "admittime")


@dataclass
class _Adm:
    subject: str
    parts: list[tuple[tuple, int]] = field(default_factory=list)  # (order key, record index)
    note_time: str | None = None
    codes: list[tuple[str, CodeSystem]] | None = None
    admittime: str | None = None
    time_key: str | None = None  # MIMIC-IV with patients: admittime moved to the anchor year group


def _progress(enabled: bool, desc: str, unit: str, total: int | None = None):
    """A bar on a terminal, timed plain lines elsewhere (:mod:`icdcoder.progress`); nothing when disabled."""
    from icdcoder.progress import Progress

    return Progress(desc, total, unit=unit, enabled=enabled)


# --------------------------------------------------------------------------------------------- main


def iter_mimic(root: str | Path, *, version: int | None = None, preset: str | None = None,
               split_file: str | Path | None = None, own_split: Literal["stratified", "time"] | None = None,
               ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 13, icd_version: int | None = None,
               codes: Iterable[str] = ("dx", "px"), min_code_count: int | None = None, top_k: int | None = None,
               clean_text: bool | None = None, resolver: CodeResolver | None = None, strict: bool | None = None,
               stats: MimicStats | None = None, progress: bool = False,
               note_root: str | Path | None = None) -> Iterator[tuple[str, Note]]:
    """Yield ``(split, note)`` for each admission kept, streaming the note file (see module doc).

    Explicit arguments override the preset's settings. ``note_root`` is where the note file lies when
    it is not under ``root`` (MIMIC-IV-Note is a separate PhysioNet project). ``strict`` (default: ``resolver.strict``) turns
    split-file ids that are absent from the data into an error instead of a counted warning.
    """
    root = Path(root)
    p = None
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown MIMIC preset {preset!r}; expected one of {sorted(PRESETS)}")
        p = PRESETS[preset]
        if version is not None and version != p.version:
            raise ValueError(f"preset {preset} is MIMIC-{'III' if p.version == 3 else 'IV'}, not version {version}")
        version = p.version
        icd_version = p.icd_version if icd_version is None else icd_version
        min_code_count = p.min_code_count if min_code_count is None else min_code_count
        clean_text = p.clean_text if clean_text is None else clean_text
    if version not in (3, 4):
        raise ValueError(f"MIMIC version must be 3 or 4, not {version!r}")
    icd_version = 9 if version == 3 else (10 if icd_version is None else int(icd_version))
    if icd_version not in (9, 10):
        raise ValueError(f"icd_version must be 9 or 10, not {icd_version!r}")
    kinds = tuple(codes)
    if not kinds or any(k not in ("dx", "px") for k in kinds):
        raise ValueError(f"codes must be a non-empty subset of ('dx', 'px'), got {kinds}")
    if split_file is not None and own_split is not None:
        raise ValueError("give either split_file or own_split, not both")
    resolver = resolver or CodeResolver()
    strict = resolver.strict if strict is None else strict
    stats = stats if stats is not None else MimicStats()
    keep_codes = p.keep_codes if p is not None else None
    lay = _III if version == 3 else _IV

    # ---- pass 1: note metadata
    note_csv = _Csv(_find(Path(note_root) if note_root is not None else root, lay.notes), lay.note_cols,
                    ("CHARTTIME", "ROW_ID") if version == 3 else ("note_seq", "charttime", "note_type", "note_id"))
    adms: dict[int, _Adm] = {}
    wanted: dict[int, int] = {}  # record index -> hadm_id
    with _progress(progress, "MIMIC notes, pass 1/2", "row") as bar:
        for index, line, row in note_csv.rows():
            stats.rows_read += 1
            bar.update()
            c = note_csv.col
            if version == 3:
                if row[c["CATEGORY"]].strip() != "Discharge summary":
                    continue
                if row[c["ISERROR"]].strip() not in ("", "0", "0.0"):
                    stats.notes_dropped["iserror_rows"] += 1
                    continue
            hadm_raw = row[c[lay.hadm]].strip()
            if not hadm_raw:
                stats.notes_dropped["rows_without_hadm_id"] += 1
                continue
            text = row[c[lay.text]]
            if is_blank(text):
                raise DataError("empty note text", path=note_csv.path, line=line, field=lay.text)
            hadm = _int(hadm_raw, note_csv, line, lay.hadm)
            subject = row[c[lay.subject]].strip()
            if version == 3:
                is_addendum = row[c["DESCRIPTION"]].strip().lower() != "report"
                ct = row[c["CHARTTIME"]] if "CHARTTIME" in c else ""
                key: tuple = (is_addendum, row[c["CHARTDATE"]], ct, index)
                when = (ct or row[c["CHARTDATE"]]).strip()
            else:
                seq = row[c["note_seq"]].strip() if "note_seq" in c else ""
                key = (_int(seq, note_csv, line, "note_seq") if seq else 0, index)
                when = row[c["charttime"]].strip() if "charttime" in c else ""
            adm = adms.get(hadm)
            if adm is None:
                adm = adms[hadm] = _Adm(subject=subject)
            adm.parts.append((key, index))
            if when and (adm.note_time is None or when < adm.note_time):
                adm.note_time = when
            wanted[index] = hadm
            stats.parts_selected += 1
    stats.admissions = len(adms)

    # ---- admissions (optional) and code tables, for admissions with notes only
    adm_path = _find(root, lay.admissions, required=False)
    if adm_path is not None:
        ac = _Csv(adm_path, (lay.hadm, lay.admittime))
        for _, line, row in ac.rows():
            h = row[ac.col[lay.hadm]].strip()
            if h:
                a = adms.get(_int(h, ac, line, lay.hadm))
                if a is not None:
                    a.admittime = _iso(row[ac.col[lay.admittime]])
    if version == 4 and own_split == "time":
        _anchor_times(root, adms)
    for kind in kinds:
        _read_codes(root, lay, kind, version, icd_version, adms, resolver)

    # ---- drops and code filters
    def drop_empty(reason: str) -> None:
        for h in [h for h, a in adms.items() if not a.codes]:
            del adms[h]
            stats.notes_dropped[reason] += 1

    drop_empty("without_codes")
    keep: set | None = None
    reason = ""
    freq = Counter(cs for a in adms.values() for cs in a.codes)
    if keep_codes is not None:
        keep, reason = {cs for cs in freq if cs[0] in keep_codes}, "not_in_top50"
    if top_k is not None:
        top = {cs for cs, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0][0]))[:top_k]}
        keep, reason = (top if keep is None else keep & top), f"not_in_top{top_k}"
    if min_code_count:
        frequent = {cs for cs, n in freq.items() if n >= min_code_count}
        keep, reason = (frequent if keep is None else keep & frequent), f"seen_fewer_than_{min_code_count}_times"
    if keep is not None:
        removed = [cs for cs in freq if cs not in keep]
        if removed:
            stats.codes_dropped[reason] += len(removed)
            stats.labels_dropped[reason] += sum(freq[cs] for cs in removed)
            for a in adms.values():
                a.codes = [cs for cs in a.codes if cs in keep]
        drop_empty("without_codes_after_filter")

    # ---- split assignment
    if split_file is not None:
        assign = read_split_file(split_file)
        present = [h for h in assign if h in adms]
        missing = len(assign) - len(present)
        if not present:
            raise DataError(f"none of the {len(assign)} ids of the split file matches an admission of the data "
                            f"({len(adms)} admissions kept); is it the split file of this dataset?",
                            path=split_file, field="_id")
        if missing:
            if strict:
                raise DataError(f"{missing} of the {len(assign)} ids of the split file are absent from the data",
                                path=split_file, field="_id")
            stats.warnings["split_ids_missing_from_data"] += missing
        for h in [h for h in adms if h not in assign]:
            del adms[h]
            stats.notes_dropped["not_in_split_file"] += 1
        split_of = {h: assign[h] for h in adms}
    elif own_split is not None:
        recs = [SplitRecord(id=str(h), patient_id=a.subject or None,
                            admission_time=a.time_key or a.admittime or _iso(a.note_time or "") or None,
                            codes=tuple(c for c, _ in a.codes)) for h, a in adms.items()]
        by_id = split_records(recs, own_split, ratios, seed=seed)
        split_of = {h: by_id[str(h)] for h in adms}
    else:
        split_of = {h: "all" for h in adms}

    wanted = {i: h for i, h in wanted.items() if h in adms}
    if not wanted:
        return
    last = max(wanted)

    # ---- pass 2: stream texts, yield each admission when its last part is read
    pending: dict[int, dict[int, str]] = {}
    with _progress(progress, "MIMIC notes, pass 2/2", "admission", total=len(adms)) as bar:
        for index, line, row in note_csv.rows():
            hadm = wanted.get(index)
            if hadm is None:
                if index > last:
                    break
                continue
            a = adms[hadm]
            text = row[note_csv.col[lay.text]]
            if len(a.parts) > 1:
                got = pending.setdefault(hadm, {})
                got[index] = text
                if len(got) < len(a.parts):
                    stats.max_pending = max(stats.max_pending, len(pending))
                    continue
                del pending[hadm]
                texts: list[str] = []
                for _, i in sorted(a.parts):
                    if got[i] not in texts:  # identical duplicate parts are kept once (as Edin et al.)
                        texts.append(got[i])
                text = "\n\n".join(t.strip("\n") for t in texts)
            if clean_text:
                text = _clean(text)
                if is_blank(text):
                    stats.notes_dropped["empty_after_cleaning"] += 1
                    continue
            split = split_of[hadm]
            codes_ = dict(a.codes)
            note = Note(id=str(hadm), text=text, codes=list(codes_), code_systems=codes_,
                        admission_time=a.admittime, patient_id=a.subject or None,
                        metadata={"hadm_id": hadm, "subject_id": a.subject, "n_parts": len(a.parts),
                                  "source": f"mimic{'iii' if version == 3 else 'iv'}"})
            stats.notes_written[split] += 1
            bar.update()
            yield split, note


def _anchor_times(root: Path, adms: dict[int, _Adm]) -> None:
    """MIMIC dates are shifted per patient; MIMIC-IV's ``patients`` (anchor_year, anchor_year_group)
    tells the real 3-year window of ``anchor_year``. Time keys become admittime with its year moved
    by ``group start - anchor_year``, so a time split orders admissions by (approximate) real time.
    Without the table (and always for MIMIC-III, which has no such information) the shifted dates
    are used, which orders admissions of different patients essentially at random."""
    path = _find(root, "patients", required=False)
    if path is None:
        return
    c = _Csv(path, ("subject_id", "anchor_year", "anchor_year_group"))
    shift: dict[str, int] = {}
    for _, line, row in c.rows():
        group = row[c.col["anchor_year_group"]].strip()
        m = re.match(r"(\d{4})", group)
        if not m:
            raise DataError(f"anchor_year_group {group!r} does not start with a year", path=c.path, line=line,
                            field="anchor_year_group")
        shift[row[c.col["subject_id"]].strip()] = int(m.group(1)) - _int(row[c.col["anchor_year"]].strip(), c, line,
                                                                             "anchor_year")
    for a in adms.values():
        d = shift.get(a.subject)
        if d is not None and a.admittime and a.admittime[:4].isdigit():
            a.time_key = f"{int(a.admittime[:4]) + d:04d}{a.admittime[4:]}"


def _read_codes(root: Path, lay: _Layout, kind: str, version: int, icd_version: int,
                adms: dict[int, _Adm], resolver: CodeResolver) -> None:
    stem = lay.dx if kind == "dx" else lay.px
    if version == 3:
        system = CodeSystem.ICD9CM if kind == "dx" else CodeSystem.ICD9PCS
    elif kind == "dx":
        system = CodeSystem.ICD9CM if icd_version == 9 else CodeSystem.ICD10CM
    else:
        system = CodeSystem.ICD9PCS if icd_version == 9 else CodeSystem.ICD10PCS
    c = _Csv(_find(root, stem), lay.code_cols)
    cache: dict[str, str | None] = {}
    found: dict[int, list[tuple[int, int, str]]] = {}
    for index, line, row in c.rows():
        h = row[c.col[lay.hadm]].strip()
        if not h:
            continue
        hadm = _int(h, c, line, lay.hadm)
        if hadm not in adms:
            continue
        if version == 4 and _int(row[c.col["icd_version"]].strip(), c, line, "icd_version") != icd_version:
            continue
        raw = row[c.col[lay.code]].strip()
        if not raw:
            continue
        if raw in cache:
            code = cache[raw]
        else:
            code = cache[raw] = resolver.resolve(raw, system, path=c.path, line=line, field=lay.code)
        if code is None:
            continue
        seq = row[c.col[lay.seq]].strip()
        found.setdefault(hadm, []).append((_int(seq, c, line, lay.seq) if seq else 1 << 30, index, code))
    for hadm, lst in found.items():
        a = adms[hadm]
        if a.codes is None:
            a.codes = []
        seen = {cd for cd, _ in a.codes}
        for _, _, code in sorted(lst):
            if code not in seen:
                seen.add(code)
                a.codes.append((code, system))


def read_split_file(path: str | Path) -> dict[int, str]:
    """``{hadm_id: split}`` from an Edin et al. split file (feather; parquet or csv also read)."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise DataError("split file not found", path=path)
    try:
        if path.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq
            table = pq.read_table(path)
        elif path.name.endswith((".csv", ".csv.gz")):
            import pyarrow.csv as pcsv
            table = pcsv.read_csv(path)
        else:
            import pyarrow.feather as feather
            table = feather.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot read split file ({e})", path=path) from None
    for name in ("_id", "split"):
        if name not in table.column_names:
            raise DataError(f"split file lacks column {name!r} (has {table.column_names})", path=path, field=name)
    ids = table.column("_id").to_pylist()
    splits = table.column("split").to_pylist()
    out: dict[int, str] = {}
    for row, (i, s) in enumerate(zip(ids, splits), start=1):
        if i is None or s is None:
            raise DataError("empty _id or split", path=path, line=row, field="_id" if i is None else "split")
        try:
            i = int(i)
        except (TypeError, ValueError):
            raise DataError(f"_id must be an integer hadm_id, got {i!r}", path=path, line=row, field="_id") from None
        s = check_split(s, path=path, line=row, field="split")
        if out.setdefault(i, s) != s:
            raise DataError(f"id {i} is in two splits ({out[i]!r} and {s!r})", path=path, line=row, field="_id")
    return out


def prepare_mimic(root: str | Path, out_dir: str | Path, *, fmt: str = "parquet", name: str | None = None,
                  resolver: CodeResolver | None = None, **kw: Any) -> dict[str, Any]:
    """Stream :func:`iter_mimic` into a prepared folder; counts go to the manifest's options/warnings."""
    from icdcoder.data.store import DatasetWriter

    resolver = resolver or CodeResolver()
    stats = kw.pop("stats", None) or MimicStats()
    preset = kw.get("preset")
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items() if k != "progress"}
    options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
    with DatasetWriter(out_dir, name=name or preset or f"mimic{kw.get('version', '')}", source="mimic",
                       fmt=fmt, options=options, resolver=resolver) as w:
        for split, note in iter_mimic(root, resolver=resolver, stats=stats, **kw):
            w.add(split, note)
        for reason, n in stats.notes_dropped.items():
            w.warn(f"notes_dropped_{reason}", n)
        for reason, n in stats.codes_dropped.items():
            w.warn(f"codes_dropped_{reason}", n)
        for kind, n in stats.warnings.items():
            w.warn(kind, n)
        w.options["mimic_stats"] = stats.as_dict()
    return w.manifest
