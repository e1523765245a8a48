"""The embedded default corpus: synthetic discharge summaries over ~300 billable ICD-10-CM codes.

Why synthetic: every coder of the project must train and be compared in minutes on 2 CPU cores
without MIMIC. The corpus is therefore built to separate good coders from bad ones, not to be easy:

* ~100 hand-written concepts (:mod:`icdcoder.data.synth_concepts`) with abbreviations and variants,
  in clusters that co-occur (T2DM + CKD + HTN, CHF + AFib + anticoagulation, COPD + tobacco ...);
* a tail of ontology codes whose mentions are rule-based rewrites of their descriptions, drawn with
  Zipf-like frequencies, so most codes are rare;
* traps that must NOT be coded, recorded in ``metadata["traps"]``: negated findings ("no evidence of
  pneumonia"), ruled-out and uncertain ones (outpatient rule: "possible X" is not coded), and family
  history, where the relative's disease code is not assigned but its Z80-Z84 code is;
* sibling codes that differ by one qualifier (E11.9 / E11.65 / E11.22 ...);
* a handful of codes that occur only in val/test, for unseen-code evaluation.

Every gold code has at least one evidence span that covers its mention exactly. The same seed
gives byte-identical notes; all randomness comes from one ``random.Random(seed)``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import accumulate
from typing import Any, Iterable, Iterator, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, model_validator

from icdcoder.data.note import Note, Span
from icdcoder.data.synth_concepts import (CLUSTERS, CONCEPTS, DIFFERENTIAL, FAMILY, MALE_ONLY, MEDS,
                                          SIBLING_GROUPS, Cluster, Concept)

SYSTEM = "icd10cm"
TRAP_KINDS = ("negated", "ruled_out", "uncertain", "family")


class SynthConfig(BaseModel):
    """Size and seed of the corpus.

    Defaults (1000/250/250 notes, 300 codes) keep TF-IDF training to seconds and a MiniLM
    fine-tune to a few minutes on 2 cores, while 250 evaluation notes still give stable micro-F1
    and leave ~half of the codes with 5 or fewer training examples (the long tail).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 13
    n_train: int = Field(1000, ge=0)
    n_val: int = Field(250, ge=0)
    n_test: int = Field(250, ge=0)
    n_codes: int = Field(300, description="hand-written concepts plus ontology tail codes")
    n_unseen: int = Field(8, ge=0, description="tail codes that occur only in val/test")
    start_year: int = 2015
    end_year: int = 2024
    revisit_rate: float = Field(0.25, ge=0, lt=1, description="share of notes from a returning patient")

    @model_validator(mode="after")
    def _enough_codes(self) -> "SynthConfig":
        if self.n_codes < len(CONCEPTS) + self.n_unseen:
            raise ValueError(f"n_codes must be at least {len(CONCEPTS) + self.n_unseen} "
                             f"({len(CONCEPTS)} hand-written concepts + n_unseen)")
        if self.end_year < self.start_year:
            raise ValueError("end_year is before start_year")
        return self


# ---------------------------------------------------------------- tail codes from the ontology

_TAIL_SKIP_CHAPTERS = "OPSTUVWXYZ"  # pregnancy, perinatal, injuries/7th characters, external causes, factors
# vague residual categories, and sex-specific organs (tail codes are given to patients of either sex)
_TAIL_SKIP_WORDS = re.compile(
    r"\b(other|specified|elsewhere|unspecified site|sequela|encounter|NEC|NOS|or|due to|following)\b"
    r"|\b(male|female|ovar|uter|vagin|vulv|cervi|endometri|prostat|test[ie]s|testic|scrot|peni|breast|pregnan)",
    re.I)


def mention_forms(description: str) -> tuple[str, ...]:
    """How a clinician would write an ontology description: the first form is the plain rewrite.

    Drops parentheses, "unspecified" and trailing "without ..." clauses, lower-cases words that are
    not acronyms, and adds the reordered "Y X" for "X of Y" and "B A" for "A, B".
    """
    d = re.sub(r"\s*\([^)]*\)", "", description)
    d = re.sub(r",\s*(?:\w+ )?unspecified(?: \w+)?$|\s*with unspecified \w+", "", d, flags=re.I)
    d = re.sub(r"\bunspecified\s*", "", d, flags=re.I)
    d = re.sub(r",?\s*\bwithout\b.*$", "", d)
    d = re.sub(r"\s+", " ", d).strip(" ,")
    d = " ".join(w if sum(ch.isupper() for ch in w) > 1 else w.lower() for w in d.split())
    forms = [d]
    if m := re.fullmatch(r"([\w'-]+) of (?:the )?([\w'-]+(?: [\w'-]+){0,2})", d):
        forms.append(f"{m.group(2)} {m.group(1)}")
    elif (m := re.fullmatch(r"([^,]+), ([^,]+)", d)) and len(m.group(2).split()) <= 3 \
            and not re.match(r"(with|in|due|of)\b", m.group(2)):
        forms.append(f"{m.group(2)} {m.group(1)}")
    return tuple(dict.fromkeys(f for f in forms if f))


def _tail_concepts(rng: random.Random, n: int) -> list[Concept]:
    """``n`` billable ontology codes with plain, unambiguous descriptions: one per category, none
    in a category of a hand-written concept, none whose mention contains a hand-written mention."""
    from icdcoder.ontology import get_ontology

    ont = get_ontology()
    core_forms = sorted({f.lower() for c in CONCEPTS for f in c.forms if len(f) >= 4}, key=len, reverse=True)
    core_re = re.compile(r"\b(?:" + "|".join(map(re.escape, core_forms)) + r")\b")
    used = {c.code[:3] for c in CONCEPTS}
    seen_forms: set[str] = set()
    pool = sorted(ont.codes(SYSTEM, billable_only=True))
    rng.shuffle(pool)
    out: list[Concept] = []
    for code in pool:
        if len(out) == n:
            break
        if code[0] in _TAIL_SKIP_CHAPTERS or code[:3] in used:
            continue
        desc = ont.describe(code, SYSTEM)
        if not desc or _TAIL_SKIP_WORDS.search(desc):
            continue
        forms = mention_forms(desc)
        if not 2 <= len(forms[0].split()) <= 7 or forms[0] in seen_forms:
            continue
        if any(core_re.search(f.lower()) for f in forms):
            continue
        used.add(code[:3])
        seen_forms.add(forms[0])
        out.append(Concept(code, forms, rng.choice(("acute", "chronic"))))
    if len(out) < n:
        raise ValueError(f"the ontology yields only {len(out)} usable tail codes, {n} asked")
    return out


# ---------------------------------------------------------------- text building

class _Piece(NamedTuple):
    """A run of text and its annotations ``(kind, code, start, end)`` relative to the run."""

    text: str
    annos: tuple[tuple[str, str, int, int], ...] = ()


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _sentence(template: str, form: str, kind: str, code: str, **kw: str) -> _Piece:
    """Fill ``{m}`` (or ``{M}``, capitalised) with a mention and annotate it."""
    text = template.format(m="\x00", M="\x01", **kw)
    mention = _cap(form) if "\x01" in text else form
    start = text.index("\x01" if "\x01" in text else "\x00")
    text = text.replace("\x00", form).replace("\x01", mention)
    return _Piece(text, ((kind, code, start, start + len(mention)),))


def _listing(forms: list[tuple[str, str]], sep: str = ", ", last: str = " and ") -> _Piece:
    """``A, B and C`` with a positive span on each item."""
    text, annos = "", []
    for i, (code, form) in enumerate(forms):
        if i:
            text += last if i == len(forms) - 1 else sep
        annos.append(("pos", code, len(text), len(text) + len(form)))
        text += form
    return _Piece(text, tuple(annos))


_HPI_WITH = "{age}-year-old {person} with a history of "
_HPI_WHO = " who presented with {cc}."
_HPI_PLAIN = ("{age}-year-old {person} who presented with {cc}.",
              "{age}-year-old {person} presenting with {cc} of {days} days' duration.",
              "{age}-year-old {person} brought in by family for {cc}.")
_PRINCIPAL = ("The patient was admitted with {m} and treated with {t}.",
              "{M} was diagnosed on admission and managed with {t}.",
              "Workup confirmed {m}; {t} was started with good response.",
              "{pr} was admitted for {m} and received {t}.")
_ACUTE = ("Course was complicated by {m}, which improved with {t}.",
          "{M} was noted and treated with {t}.",
          "{pr} also developed {m}, managed with {t}.",
          "Labs and exam were consistent with {m}; {t} was given.")
_CHRONIC_COURSE = ("{M} was stable and home medications were continued.",
                   "Known {m}, unchanged during this admission.",
                   "For {m}, the outpatient regimen was resumed.")
_STATUS_MEDS = ("Notable for {m}.", "Medication history reflects {m}.", "{M} was continued at discharge.")
_SOCIAL = ("Social history is notable for {m}.", "{M}, per the patient.", "Reports {m}.")
_FAMILY_REL = ("{Rel} had {d}.", "{Rel} was diagnosed with {d}.")
_FAMILY_FH = ("Family history of {d} in {pos} {rel}.",)
_TRAPS = {
    "negated": ("{pr} denies {m}.", "No evidence of {m} on imaging.", "Workup was negative for {m}.",
                "There were no signs of {m}.", "No history of {m}."),
    "ruled_out": ("{M} was ruled out.", "{M} was considered and subsequently ruled out.",
                  "Initial concern for {m} was ruled out by further testing.",
                  "{pr} was started empirically on {t} for {m}, which was subsequently ruled out.",
                  "{t} was given on arrival until {m} was ruled out."),
    "uncertain": ("Possible {m}, to be evaluated further as an outpatient.",
                  "Questionable {m}; follow-up testing was arranged.", "Cannot exclude {m} at this time."),
}
_DX_TRAPS = {"ruled_out": ("{M}, ruled out", "{M} - ruled out"),
             "uncertain": ("Possible {m}", "Questionable {m}, outpatient follow-up")}
_FILLER = (
    "Vital signs on arrival: temperature {temp} C, heart rate {hr}, blood pressure {sbp}/{dbp}, "
    "oxygen saturation {spo2}% on room air.",
    "Physical examination was notable for an alert and oriented patient in no acute distress.",
    "Admission labs showed a white count of {wbc}, hemoglobin {hgb} and creatinine {cr}.",
    "A basic metabolic panel was repeated daily and remained within expected limits.",
    "Chest radiograph was obtained and reviewed with radiology.",
    "Physical therapy evaluated the patient and recommended {pt}.",
    "Pain was controlled with oral acetaminophen.",
    "The patient tolerated a regular diet by hospital day {hd}.",
    "Case management assisted with discharge planning.",
    "Home medications were reconciled on admission and at discharge.",
    "The patient ambulated independently before discharge.",
    "Telemetry showed no concerning events overnight.",
    "Electrolytes were monitored and repleted as needed.",
    "VTE prophylaxis was provided with subcutaneous heparin.",
    "Infectious disease and pharmacy reviewed the antibiotic plan.",
    "Intake and output were recorded every shift.",
    "Blood cultures drawn on admission showed no growth at {hd} days.",
    "Echocardiogram showed an ejection fraction of {ef}%.",
    "Fingerstick glucose ranged from {glu} to {glu2} mg/dL.",
    "Repeat labs before discharge showed a sodium of {na} and potassium of {k}.",
    "Follow-up with the primary care physician was arranged within {fu} days.",
    "Lungs were clear on auscultation at discharge and the abdomen was soft.",
    "The patient and family were updated daily on the plan of care.",
)
_SOCIAL_NONE = ("Lives at home with family.", "Lives alone; independent in daily activities.",
                "Retired; lives with spouse.")
_DISPOSITIONS = ("Discharged home in stable condition.", "Discharged to a skilled nursing facility.",
                 "Discharged home with home health services.")
_RELATIVES = ("mother", "father", "sister", "brother", "maternal grandmother", "paternal uncle")


class _Ctx(NamedTuple):
    concepts: dict[str, Concept]
    ranked_tail: list[str]
    chronic: list[str]
    incidental: list[str]
    trap_pool: list[str]
    unseen: frozenset[str]


def _exclusive() -> dict[str, set[str]]:
    """Codes that cannot be coded together (siblings, and combination codes that absorb others)."""
    groups = list(SIBLING_GROUPS) + [("E11.9", "E11.42"), ("I10", "I12.9"), ("R65.20", "R65.21"),
                                     ("F17.210", "Z87.891"), ("I25.2", "I21.4", "I21.3")]
    out: dict[str, set[str]] = {}
    for g in groups:
        for c in g:
            out.setdefault(c, set()).update(x for x in g if x != c)
    return out


_EXCLUSIVE = _exclusive()


@lru_cache(maxsize=None)
def _zipf_cum(n: int) -> list[float]:
    return list(accumulate(1 / (r + 1) for r in range(n)))


def _zipf(rng: random.Random, items: list[str]) -> str:
    """Rank r (from 0) is drawn with weight 1/(r+1): the long tail of real code frequencies."""
    return rng.choices(items, cum_weights=_zipf_cum(len(items)))[0]


class _Patient:
    def __init__(self, pid: str, rng: random.Random, ctx: _Ctx, when: datetime):
        self.id = pid
        self.female = rng.random() < 0.5
        self.birth_year = when.year - rng.randint(28, 92)
        self.history = [_zipf(rng, ctx.chronic) for _ in range(rng.choice((0, 1, 1, 2, 2, 3)))]
        self.last = when


def _pick_codes(rng: random.Random, ctx: _Ctx, patient: _Patient, split: str,
                extra: list[str]) -> tuple[Cluster, list[str]]:
    """Gold codes of one admission: a principal cluster, maybe a second, the patient's history,
    incidental and tail codes, and ``extra`` codes that guarantee coverage."""
    clusters = [rng.choices(CLUSTERS, weights=[c.weight for c in CLUSTERS])[0]]
    if rng.random() < 0.3:
        clusters.append(rng.choices(CLUSTERS, weights=[c.weight for c in CLUSTERS])[0])
    wanted: list[str] = []
    for k, cl in enumerate(clusters):
        for alts, p in cl.members:
            if rng.random() < p * (0.5 if k else 1.0):
                wanted.append(rng.choices(alts, weights=[3] + [1] * (len(alts) - 1))[0])
    wanted += patient.history
    if rng.random() < 0.3:
        wanted.append(_zipf(rng, ctx.incidental))
    tail = [c for c in ctx.ranked_tail if split != "train" or c not in ctx.unseen]
    wanted += [_zipf(rng, tail) for _ in range(rng.choice((0, 1, 1, 2)))]
    wanted += extra
    if rng.random() < 0.35:  # last, so that the check below sees every disease code
        wanted.append(rng.choice(sorted(FAMILY)))
    codes: list[str] = []
    for c in wanted:
        if c in codes or _EXCLUSIVE.get(c, set()) & set(codes) or (patient.female and c in MALE_ONLY):
            continue
        if c in FAMILY and FAMILY[c][0] in codes:
            continue  # keep family traps unambiguous: the relative's disease is not also the patient's
        codes.append(c)
    return clusters[0], codes


def _note(rng: random.Random, ctx: _Ctx, nid: str, split: str, patient: _Patient, when: datetime,
          extra: list[str]) -> Note:
    """One discharge summary: gold codes, traps, then sections filled from templates and padded."""
    cluster, codes = _pick_codes(rng, ctx, patient, split, extra)
    con = ctx.concepts

    def form(code: str) -> str:
        return rng.choice(con[code].forms)

    kw = {"pr": "She" if patient.female else "He"}
    kinds = {k: [c for c in codes if con[c].kind == k] for k in ("acute", "chronic", "status", "meds",
                                                                   "social", "family", "code")}
    acute, chronic = kinds["acute"], kinds["chronic"] + kinds["status"]
    rng.shuffle(chronic)

    traps = _pick_traps(rng, ctx, cluster, codes)

    sec: dict[str, list[_Piece]] = {s: [] for s in ("cc", "hpi", "pmh", "fh", "sh", "course", "meds", "dx", "dispo")}
    age, person = str(when.year - patient.birth_year), ("woman" if patient.female else "man")
    cc = rng.choice(cluster.complaints)
    sec["cc"].append(_Piece(_cap(cc) + "."))
    n_hpi = min(len(chronic), rng.choice((0, 1, 2, 3)))
    if n_hpi:
        lead = _HPI_WITH.format(age=age, person=person)
        items = _listing([(c, form(c)) for c in chronic[:n_hpi]])
        sec["hpi"].append(_Piece(lead + items.text + _HPI_WHO.format(cc=cc),
                                 tuple((k, c, s + len(lead), e + len(lead)) for k, c, s, e in items.annos)))
    else:
        sec["hpi"].append(_Piece(rng.choice(_HPI_PLAIN).format(age=age, person=person, cc=cc,
                                                                days=rng.randint(2, 7))))
    rest = chronic[n_hpi:]
    in_course = [c for c in rest if con[c].kind == "chronic" and rng.random() < 0.25]
    pmh = [c for c in rest if c not in in_course]
    if pmh:
        sep = rng.choice(((", ", ", and "), ("; ", "; "), ("\n- ", "\n- ")))
        items = _listing([(c, form(c)) for c in pmh], *sep)
        lead = "- " if sep[0].startswith("\n") else ""
        sec["pmh"].append(_Piece(lead + items.text + ("" if lead else "."),
                                 tuple((k, c, s + len(lead), e + len(lead)) for k, c, s, e in items.annos)))
    else:
        sec["pmh"].append(_Piece("Otherwise unremarkable."))

    for i, c in enumerate(acute):
        t = (con[c].treatment if rng.random() < 0.6 else "") or rng.choice(
            ("supportive care", "standard therapy", "close monitoring", "the usual protocol"))
        sec["course"].append(_sentence(rng.choice(_PRINCIPAL if i == 0 else _ACUTE), form(c), "pos", c,
                                       **{**kw, "t": t}))
    for c in in_course:
        sec["course"].append(_sentence(rng.choice(_CHRONIC_COURSE), form(c), "pos", c, **kw))
    dx_traps = []
    for kind, c in traps:
        target = "hpi" if kind == "negated" and rng.random() < 0.5 else "course"
        t = con[c].treatment or "supportive care"
        sec[target].append(_sentence(rng.choice(_TRAPS[kind]), form(c), kind, c, **{**kw, "t": t}))
        if kind != "negated" and rng.random() < 0.5:
            dx_traps.append((kind, c))
    for c in kinds["meds"]:
        sec["meds"].append(_sentence(rng.choice(_STATUS_MEDS), form(c), "pos", c, **kw))
    for c in kinds["social"]:
        sec["sh"].append(_sentence(rng.choice(_SOCIAL), form(c), "pos", c, **kw))
    if not kinds["social"]:
        sec["sh"].append(_Piece(rng.choice(_SOCIAL_NONE)))
    for c in kinds["family"]:
        sec["fh"].append(_family(rng, c, patient.female))
    if not kinds["family"]:
        sec["fh"].append(_Piece(rng.choice(("Noncontributory.", "Not relevant to this admission."))))
    for c in kinds["code"]:
        sec["dispo"].append(_sentence("Code status: {m}.", form(c), "pos", c))
    sec["dispo"].append(_Piece(rng.choice(_DISPOSITIONS)))
    meds = sorted({rng.choice(MEDS[c]) for c in codes if c in MEDS})
    sec["meds"][:0] = [_Piece("\n".join(f"- {m}" for m in meds) + "\n" if meds else "None on admission.\n")]
    dx = acute[:1] + [c for c in acute[1:] + chronic if rng.random() < 0.5]
    for i, c in enumerate(dx, 1):
        f = form(c)
        sec["dx"].append(_Piece(f"{i}. {_cap(f)}\n", (("pos", c, len(f"{i}. "), len(f"{i}. ") + len(f)),)))
    for i, (kind, c) in enumerate(dx_traps, len(dx) + 1):
        sec["dx"].append(_sentence(f"{i}. " + rng.choice(_DX_TRAPS[kind]) + "\n", form(c), kind, c))
    if not sec["dx"]:
        sec["dx"].append(_Piece("See hospital course.\n"))

    _pad(rng, sec["course"], sum(len(p.text.split()) for ps in sec.values() for p in ps))
    text, spans, trap_recs = _render(sec, when, rng)
    spans_by = [Span(code=c, start=s, end=e) for c, s, e in spans]
    return Note.build(nid, text, [(c, SYSTEM) for c in codes], spans=spans_by,
                      admission_time=when.isoformat(), patient_id=patient.id,
                      metadata={"source": "synthetic", "sex": "F" if patient.female else "M",
                                "cluster": cluster.name, "traps": trap_recs})


def _pick_traps(rng: random.Random, ctx: _Ctx, cluster: Cluster, codes: list[str]) -> list[tuple[str, str]]:
    """0-3 findings that are mentioned but not coded, mostly from the cluster's differential so that
    the context alone does not give them away; never in a category of a gold code."""
    cats = {c[:3] for c in codes}
    near = [c for c in DIFFERENTIAL.get(cluster.name, ()) if c[:3] not in cats]
    far = [c for c in ctx.trap_pool if c[:3] not in cats and c not in near]
    out: list[tuple[str, str]] = []
    for _ in range(rng.choice((0, 1, 2, 2, 3, 3))):
        pool = near if near and rng.random() < 0.7 else far
        if not pool:
            break
        c = pool.pop(rng.randrange(len(pool)))
        out.append((rng.choice(("negated", "negated", "ruled_out", "uncertain")), c))
    return out


def _family(rng: random.Random, zcode: str, female: bool) -> _Piece:
    """"Mother had breast cancer": the Z code spans the sentence, the disease is a family trap."""
    disease, name = FAMILY[zcode]
    rel = rng.choice(_RELATIVES)
    if rng.random() < 0.5:
        body = rng.choice(_FAMILY_REL).format(Rel=_cap(rel), d=name)
    else:
        body = _FAMILY_FH[0].format(d=name, pos="her" if female else "his", rel=rel)
    start = body.index(name)
    return _Piece(body, (("pos", zcode, 0, len(body) - 1), ("family", disease, start, start + len(name))))


def _pad(rng: random.Random, course: list[_Piece], words: int) -> None:
    """Filler sentences until the note reaches a drawn target length (discharge summaries vary)."""
    target = rng.randint(150, 300)
    fillers = list(_FILLER)
    rng.shuffle(fillers)
    values = dict(
        temp=f"{rng.uniform(36.4, 38.9):.1f}", hr=rng.randint(58, 124), sbp=rng.randint(92, 178),
        dbp=rng.randint(50, 98), spo2=rng.randint(86, 99), wbc=f"{rng.uniform(3.5, 19):.1f}",
        hgb=f"{rng.uniform(7.2, 15.5):.1f}", cr=f"{rng.uniform(0.6, 4.2):.1f}",
        pt=rng.choice(("home with outpatient therapy", "a short rehabilitation stay")),
        hd=rng.randint(2, 4), ef=rng.choice((25, 35, 45, 55, 60, 65)), glu=rng.randint(70, 140),
        glu2=rng.randint(150, 380), na=rng.randint(128, 144), k=f"{rng.uniform(3.1, 5.4):.1f}",
        fu=rng.choice((7, 10, 14)))
    for f in fillers:
        if words >= target:
            break
        text = f.format(**values)
        course.insert(rng.randint(0, len(course)), _Piece(text))
        words += len(text.split())


_TITLES = {"cc": "Chief complaint", "hpi": "History of present illness", "pmh": "Past medical history",
           "fh": "Family history", "sh": "Social history", "course": "Hospital course",
           "meds": "Medications on admission", "dx": "Discharge diagnoses", "dispo": "Disposition"}


def _render(sec: dict[str, list[_Piece]], when: datetime, rng: random.Random):
    """Join sections into the note text; annotations become absolute offsets."""
    discharge = when + timedelta(days=rng.randint(1, 9))
    out = [f"DISCHARGE SUMMARY\nAdmission date: {when:%Y-%m-%d}    Discharge date: {discharge:%Y-%m-%d}\n"
           f"Service: {rng.choice(('Medicine', 'Hospital Medicine', 'Internal Medicine'))}\n"]
    pos = len(out[0])
    spans: list[tuple[str, int, int]] = []
    traps: list[dict[str, Any]] = []

    def add(text: str, annos: Iterable[tuple[str, str, int, int]] = ()) -> None:
        nonlocal pos
        for kind, code, s, e in annos:
            if kind == "pos":
                spans.append((code, pos + s, pos + e))
            else:
                traps.append({"kind": kind, "code": code, "start": pos + s, "end": pos + e})
        out.append(text)
        pos += len(text)

    for key, title in _TITLES.items():
        multiline = key in ("dx", "meds") or (sec[key] and sec[key][0].text.startswith("- "))
        add(f"\n{title}:" + ("\n" if multiline else " "))
        for i, piece in enumerate(sec[key]):
            if i and not multiline:
                add(" ")
            add(piece.text, piece.annos)
            if multiline and not piece.text.endswith("\n"):
                add("\n")
        if not multiline:
            add("\n")
    return "".join(out).rstrip() + "\n", spans, traps


# ---------------------------------------------------------------- public API

def _context(cfg: SynthConfig, rng: random.Random) -> _Ctx:
    tail = _tail_concepts(rng, cfg.n_codes - len(CONCEPTS))
    concepts = {c.code: c for c in (*CONCEPTS, *tail)}
    core = list(CONCEPTS)
    rng.shuffle(core)  # seed-dependent prevalence order of history codes
    return _Ctx(
        concepts=concepts,
        ranked_tail=[c.code for c in tail],
        chronic=[c.code for c in core if c.kind in ("chronic", "status", "social", "meds")],
        incidental=[c.code for c in core if c.kind == "acute"],
        trap_pool=[c.code for c in CONCEPTS if c.trap],
        unseen=frozenset(c.code for c in rng.sample(tail, cfg.n_unseen)),
    )


def _coverage(rng: random.Random, ctx: _Ctx, split: str, n: int) -> dict[int, list[str]]:
    """Extra codes per note index: every seen code once in train, every unseen code twice in val/test
    (at most 3 extras a note, so a split far smaller than the code set covers only part of it)."""
    if split == "train":
        codes = [c for c in ctx.concepts if c not in ctx.unseen and ctx.concepts[c].kind != "family"]
        reps = 1
    else:
        codes, reps = sorted(ctx.unseen), 2
    out: dict[int, list[str]] = {}
    if n:
        for c in codes:
            for i in rng.sample(range(n), min(reps, n)):
                if len(out.setdefault(i, [])) < 3:
                    out[i].append(c)
    return out


def generate_synthetic(cfg: SynthConfig | None = None) -> Iterator[tuple[str, Note]]:
    """Yield ``(split, note)`` for train, then val, then test. Patients never cross splits."""
    cfg = cfg or SynthConfig()
    rng = random.Random(cfg.seed)
    ctx = _context(cfg, rng)
    start = datetime(cfg.start_year, 1, 1, 0, 0)
    span_days = (datetime(cfg.end_year, 12, 31) - start).days
    n_note = n_pat = 0
    for split, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        extra = _coverage(rng, ctx, split, n)
        patients: list[_Patient] = []
        for i in range(n):
            when = None
            if patients and rng.random() < cfg.revisit_rate:
                patient = rng.choice(patients)
                when = patient.last + timedelta(days=rng.randint(20, 400), hours=rng.randint(0, 23))
                if when.year > cfg.end_year:
                    when = None
            if when is None:
                when = start + timedelta(days=rng.randint(0, span_days), hours=rng.randint(0, 23),
                                         minutes=rng.choice((0, 15, 30, 45)))
                n_pat += 1
                patient = _Patient(f"SP{n_pat:05d}", rng, ctx, when)
                patients.append(patient)
            patient.last = when
            n_note += 1
            yield split, _note(rng, ctx, f"synth-{n_note:05d}", split, patient, when, extra.get(i, []))


def corpus_facts(pairs: Iterable[tuple[str, Note]]) -> dict[str, Any]:
    """Facts that show the corpus is what it claims: long tail, traps, eval-only codes, lengths."""
    notes: dict[str, list[Note]] = {}
    for split, note in pairs:
        notes.setdefault(split, []).append(note)
    train = Counter(c for n in notes.get("train", []) for c in n.codes)
    every = Counter(c for ns in notes.values() for n in ns for c in n.codes)
    eval_codes = {c for s, ns in notes.items() if s != "train" for n in ns for c in n.codes}
    buckets = {"0": 0, "1": 0, "2-5": 0, "6-20": 0, "21-100": 0, ">100": 0}
    for c in every:
        k = train[c]
        buckets["0" if k == 0 else "1" if k == 1 else "2-5" if k <= 5 else "6-20" if k <= 20
                else "21-100" if k <= 100 else ">100"] += 1
    top = sorted(train.values(), reverse=True)[:max(1, len(train) // 10)]
    words = [len(n.text.split()) for ns in notes.values() for n in ns]
    return {
        "notes": {s: len(ns) for s, ns in notes.items()},
        "codes": len(every),
        "labels_per_note": round(sum(every.values()) / max(1, len(words)), 2),
        "train_frequency_buckets": buckets,
        "top10pct_label_share": round(sum(top) / max(1, sum(train.values())), 3),
        "traps": dict(sorted(Counter(t["kind"] for ns in notes.values() for n in ns
                                     for t in n.metadata.get("traps", [])).items())),
        "eval_only_codes": sorted(eval_codes - set(train)),
        "words": {"min": min(words, default=0), "mean": round(sum(words) / max(1, len(words)), 1),
                  "max": max(words, default=0)},
        "patients": len({n.patient_id for ns in notes.values() for n in ns}),
    }
