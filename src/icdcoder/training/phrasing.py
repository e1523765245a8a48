"""Rule-based rewrites of ontology text (descriptions, inclusion terms, index phrases) into the short
phrasings clinicians write in notes, for code-centric training examples (span text -> code).

Every rule is a small function of one already-cleaned string; :func:`phrasings` chains them::

    phrasings("Type 2 diabetes mellitus without complications")
    # ['type 2 diabetes mellitus', 'T2DM', 'known T2DM', 'type 2 diabetes mellitus, stable']

Rules (outputs listed as: plain form, its abbreviation, each reordered form followed by its
abbreviation, then the qualified forms):

1. :func:`plain_rewrite` - the ontology wording with its coding scaffolding removed (parenthetical
   and bracketed asides, "unspecified", NOS/NEC, trailing "without ..." / "uncomplicated" clauses,
   the default ", initial encounter (for closed fracture)"), and the first word put in note case.
2. :func:`reorder_of` - "X of Y" -> "Y X" for short X and Y ("fracture of left femur" ->
   "left femur fracture").
3. :func:`reorder_comma` - "A, B" -> "B A" when B is a short modifier ("pneumonia, viral" ->
   "viral pneumonia"; "chronic kidney disease, stage 4" -> "stage 4 chronic kidney disease").
4. :func:`due_to_as_secondary` - "A due to B" -> "A secondary to B".
5. :func:`abbreviate` - whole-phrase substitution from :data:`ABBREVIATIONS` (longest phrase first),
   applied to the plain form and to each reordered form.
6. :func:`add_qualifiers` - "known X" and either "chronic X" or "X, stable", only where the
   qualifier cannot change the code (see that function for the guard lists).

No rule ever writes "history of": in ICD-10-CM that moves a condition to a Z86/Z87 personal
history code. Everything here is deterministic and never raises on a string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import partial

__all__ = [
    "ABBREVIATIONS",
    "abbreviate",
    "add_qualifiers",
    "code_phrasings",
    "due_to_as_secondary",
    "phrasings",
    "plain_rewrite",
    "reorder_comma",
    "reorder_of",
]

#: Long form (lower case, single spaces) -> the abbreviation US clinical notes use for it.
#: Matched case-insensitively as whole phrases; longer phrases win over the phrases inside them
#: ("type 2 diabetes mellitus" -> "T2DM", not "type 2 DM").
ABBREVIATIONS: dict[str, str] = {
    # cardiovascular
    "hypertension": "HTN",
    "congestive heart failure": "CHF",
    "heart failure": "HF",
    "atrial fibrillation": "AFib",
    "atrial flutter": "AFL",
    "myocardial infarction": "MI",
    "acute myocardial infarction": "AMI",
    "st elevation myocardial infarction": "STEMI",
    "non-st elevation myocardial infarction": "NSTEMI",
    "acute coronary syndrome": "ACS",
    "coronary artery disease": "CAD",
    "atherosclerotic heart disease of native coronary artery": "CAD",
    "atherosclerotic heart disease": "ASHD",
    "hyperlipidemia": "HLD",
    "peripheral arterial disease": "PAD",
    "peripheral artery disease": "PAD",
    "peripheral vascular disease": "PVD",
    "deep vein thrombosis": "DVT",
    "pulmonary embolism": "PE",
    "cerebrovascular accident": "CVA",
    "transient ischemic attack": "TIA",
    "transient cerebral ischemic attack": "TIA",
    "left ventricular hypertrophy": "LVH",
    "left bundle branch block": "LBBB",
    "right bundle branch block": "RBBB",
    "supraventricular tachycardia": "SVT",
    "ventricular tachycardia": "VT",
    "ventricular fibrillation": "VF",
    "abdominal aortic aneurysm": "AAA",
    "aortic stenosis": "AS",
    "aortic insufficiency": "AI",
    "mitral insufficiency": "MR",
    "tricuspid insufficiency": "TR",
    "mitral valve prolapse": "MVP",
    "patent foramen ovale": "PFO",
    "atrial septal defect": "ASD",
    "ventricular septal defect": "VSD",
    "patent ductus arteriosus": "PDA",
    "chronic venous insufficiency": "CVI",
    # endocrine / metabolic
    "type 2 diabetes mellitus": "T2DM",
    "type 1 diabetes mellitus": "T1DM",
    "type ii diabetes mellitus": "T2DM",     # ICD-9-CM wording
    "type i diabetes mellitus": "T1DM",
    "diabetes mellitus": "DM",
    "diabetic ketoacidosis": "DKA",
    "polycystic ovarian syndrome": "PCOS",
    "polycystic ovary syndrome": "PCOS",
    # renal / urologic
    "chronic kidney disease": "CKD",
    "end stage renal disease": "ESRD",
    "end-stage renal disease": "ESRD",
    "acute kidney injury": "AKI",
    "acute kidney failure": "AKI",
    "acute renal failure": "ARF",
    "urinary tract infection": "UTI",
    "benign prostatic hyperplasia": "BPH",
    "overactive bladder": "OAB",
    "erectile dysfunction": "ED",
    # respiratory
    "chronic obstructive pulmonary disease": "COPD",
    "pneumonia": "PNA",
    "community acquired pneumonia": "CAP",
    "upper respiratory infection": "URI",
    "obstructive sleep apnea": "OSA",
    "acute respiratory distress syndrome": "ARDS",
    "shortness of breath": "SOB",
    "respiratory syncytial virus": "RSV",
    # gastrointestinal / hepatic
    "gastroesophageal reflux disease": "GERD",
    "gastro-esophageal reflux disease": "GERD",
    "gastrointestinal hemorrhage": "GI bleed",
    "gastrointestinal": "GI",
    "inflammatory bowel disease": "IBD",
    "irritable bowel syndrome": "IBS",
    "nonalcoholic steatohepatitis": "NASH",
    "nonalcoholic fatty liver disease": "NAFLD",
    "hepatitis c": "hep C",
    "hepatitis b": "hep B",
    "clostridioides difficile": "C. diff",
    "clostridium difficile": "C. diff",
    # neurologic / psychiatric
    "multiple sclerosis": "MS",
    "amyotrophic lateral sclerosis": "ALS",
    "traumatic brain injury": "TBI",
    "subarachnoid hemorrhage": "SAH",
    "subdural hemorrhage": "SDH",
    "intracerebral hemorrhage": "ICH",
    "altered mental status": "AMS",
    "benign paroxysmal vertigo": "BPPV",
    "benign paroxysmal positional vertigo": "BPPV",
    "restless legs syndrome": "RLS",
    "major depressive disorder": "MDD",
    "generalized anxiety disorder": "GAD",
    "post-traumatic stress disorder": "PTSD",
    "posttraumatic stress disorder": "PTSD",
    "attention-deficit hyperactivity disorder": "ADHD",
    "attention deficit hyperactivity disorder": "ADHD",
    "obsessive-compulsive disorder": "OCD",
    # musculoskeletal
    "osteoarthritis": "OA",
    "rheumatoid arthritis": "RA",
    "degenerative joint disease": "DJD",
    "degenerative disc disease": "DDD",
    "systemic lupus erythematosus": "SLE",
    "carpal tunnel syndrome": "CTS",
    "low back pain": "LBP",
    "anterior cruciate ligament": "ACL",
    "fracture": "fx",
    # hematologic / oncologic / infectious
    "iron deficiency anemia": "IDA",
    "sickle cell disease": "SCD",
    "disseminated intravascular coagulation": "DIC",
    "idiopathic thrombocytopenic purpura": "ITP",
    "chronic lymphocytic leukemia": "CLL",
    "chronic myeloid leukemia": "CML",
    "acute myeloid leukemia": "AML",
    "acute lymphoblastic leukemia": "ALL",
    "human immunodeficiency virus": "HIV",
    "methicillin resistant staphylococcus aureus": "MRSA",
    "methicillin-resistant staphylococcus aureus": "MRSA",
    "systemic inflammatory response syndrome": "SIRS",
    "pelvic inflammatory disease": "PID",
    # eye / obstetric
    "primary open-angle glaucoma": "POAG",
    "age-related macular degeneration": "AMD",
    "premature rupture of membranes": "PROM",
    # locations ("left"/"right" alone stay spelt out: a lone "L"/"R" is ambiguous in notes)
    "left lower quadrant": "LLQ",
    "right lower quadrant": "RLQ",
    "left upper quadrant": "LUQ",
    "right upper quadrant": "RUQ",
    "left lower extremity": "LLE",
    "right lower extremity": "RLE",
    "left upper extremity": "LUE",
    "right upper extremity": "RUE",
}

_WS = re.compile(r"\s+")


def _squash(text: str) -> str:
    return _WS.sub(" ", text).strip()


# --- rule 1: plain rewrite ------------------------------------------------------------------------

_PARENS = re.compile(r"\([^()]*\)")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_STRAY_BRACKETS = re.compile(r"[()\[\]]")

#: Comma segments that carry coding detail a note does not state, dropped wherever they stand
#: (a segment runs to the next comma or the end), tried until none applies. An "unspecified"
#: segment goes whole only when what it leaves unspecified is one of _UNSPECIFIED_WHAT; otherwise
#: only the word goes ("..., unspecified femur" keeps "femur").
_UNSPECIFIED_WHAT = (
    "organism|sites?|stage|type|severity|parts?|laterality|side|eye|ear|episode|degree|trimester|"
    "cause|body region|region|location|level|vertebrae?")
_SEGMENTS = [
    re.compile(r",\s*initial encounter(?:\s+for closed fracture)?\s*(?=,|$)", re.I),
    re.compile(r",\s*(?:and|or)\s+unspecified\b[^,]*$", re.I),
    re.compile(rf",\s*unspecified(?:\s+(?:{_UNSPECIFIED_WHAT}))?\s*(?=,|$)", re.I),
    re.compile(rf",\s*(?:{_UNSPECIFIED_WHAT})\s+unspecified\s*(?=,|$)", re.I),   # ", organism unspecified"
    re.compile(r",\s*[^,]*\bnot (?:otherwise )?specified\b[^,]*(?=,|$)", re.I),
    re.compile(r",\s*not stated as\b[^,]*(?=,|$)", re.I),
    re.compile(r",\s*not intractable\s*(?=,|$)", re.I),
    re.compile(r",\s*uncomplicated\s*(?=,|$)", re.I),
]
_UNSPECIFIED_SEGMENT = re.compile(r",\s*unspecified\s+([^,]+?)\s*(?=,|$)", re.I)


def _drop_repeated_site(text: str) -> str:
    """Drops ", unspecified <site>" when every word of the site already stands before it
    ("... at lower leg level, unspecified leg"); a site named only there stays (as "<site>")."""
    for m in _UNSPECIFIED_SEGMENT.finditer(text):
        before = set(re.findall(r"[a-z0-9]+", text[:m.start()].lower()))
        if set(re.findall(r"[a-z0-9]+", m.group(1).lower())) <= before:
            return text[:m.start()] + text[m.end():]
    return text


_SEGMENT_CUTS = [*(partial(p.sub, "") for p in _SEGMENTS), _drop_repeated_site]

#: The last "without ..." clause is dropped too when it is a short trailing object (at most five
#: words, no comma, "of" or "with" in it: "without complications", "without esophagitis"), unless
#: it starts with a word of _KEEP_AFTER_WITHOUT (a subtype clinicians do write: "migraine without
#: aura"). "Laceration without foreign body of right elbow" keeps its clause.
_WITHOUT = re.compile(r",?\s+without\s+((?:(?!\bwithout\b).)*)$", re.I)  # the last "without"
_KEEP_AFTER_WITHOUT = ("aura",)

#: Inline scaffolding, removed wherever it stands (in this order).
_INLINE = [
    re.compile(r"\s+without mention of\b[^,]*", re.I),     # ICD-9-CM: "without mention of complication"
    re.compile(r"\bunspecified\s+(?:part|site|region|type)s?\s+of\b", re.I),
    re.compile(r"\b(?:of|at|in|on)\s+unspecified\s+(?:sites?|parts?|region|body region|location|organism)\b", re.I),
    re.compile(r"\bwith\s+unspecified\s+severity\b", re.I),
    re.compile(r"\b(?:and|or)\s+unspecified\b", re.I),
    re.compile(r"\bunspecified\b", re.I),
    re.compile(r"\bnot elsewhere classified\b", re.I),
    re.compile(r"\bnot otherwise specified\b", re.I),
    re.compile(r"\b(?:NOS|NEC)\b"),
]
_CLAUSE_COMMA = re.compile(r",\s+(?=(?:with|without|in|due to)\b)", re.I)  # "X, with Y" -> "X with Y"
_DANGLING_END = re.compile(r"(?:[\s,;:]+|\s+(?:of|and|or|with|in|on|at|to|for|by|due)\b)+$", re.I)
_DANGLING_START = re.compile(r"^(?:[\s,;:]+|(?:and|or|of|with)\s+)+", re.I)


def _keep_case(part: str) -> bool:
    """A word part that keeps its capitals: an acronym (two or more capitals, ``HIV``, ``NSTEMI``),
    a capital with a digit (``B12``, ``COVID-19``), a single capital letter (vitamin ``D``,
    hepatitis ``B``) or a possessive eponym (``Parkinson's``, ``Crohn's``)."""
    caps = sum(c.isupper() for c in part)
    if caps >= 2 or (caps and any(c.isdigit() for c in part)):
        return True
    if len(part) == 1 and part.isupper():
        return True
    return bool(re.fullmatch(r"[A-Z][a-z]+['\u2019]s", part))


def _note_case(text: str) -> str:
    """Lower-cases the first word (ICD text is sentence case) unless :func:`_keep_case` says
    otherwise; later words keep the ontology's casing, where capitals mark proper names
    ("Staphylococcus aureus", "Parkinsonism"). Non-possessive eponyms that open a description
    ("Hodgkin lymphoma") are lower-cased: the rule cannot tell them from ordinary words."""
    if not text:
        return text
    first, sep, rest = text.partition(" ")
    parts = re.split(r"([-/])", first)
    first = "".join(p if p in "-/" or _keep_case(p) else p.lower() for p in parts)
    return first + sep + rest


def _tidy(text: str) -> str:
    text = _squash(text)
    text = re.sub(r"\s+([,;:])", r"\1", text)
    text = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", text)
    prev = None
    while prev != text:
        prev = text
        text = _DANGLING_START.sub("", text)
        text = _DANGLING_END.sub("", text)
    return text.strip()


_OR_UNSPECIFIED_SAME = re.compile(r"\b(\w+)(\s+\S+)\s+(?:or|and)\s+unspecified\s+\1\b", re.I)


def plain_rewrite(text: str) -> str:
    """The ontology wording as a note would carry it; "" when nothing is left.

    Drops "(...)" and "[...]" asides; the comma segments ", unspecified (organism/site/stage/...)"
    (or ", organism unspecified"),
    ", or unspecified ..." (at the end), ", site not specified", ", not stated as ...", ", not intractable",
    ", uncomplicated", ", initial encounter (for closed fracture)" (the default encounter) and
    ", unspecified <site>" when the site is already named; a short trailing "without ..." clause
    (see _KEEP_AFTER_WITHOUT); then "without mention of ..." (ICD-9-CM), "X Y or unspecified X" ->
    "X Y", and the word "unspecified" wherever it stands (with "unspecified part of", "of unspecified site", "with unspecified severity",
    "and/or unspecified"), NOS, NEC and "not elsewhere classified". Collapses whitespace, writes
    "X, with Y" as "X with Y" and note-cases the first word (see :func:`_note_case`).

    >>> plain_rewrite("Essential (primary) hypertension")
    'essential hypertension'
    >>> plain_rewrite("Type 2 diabetes mellitus without complications")
    'type 2 diabetes mellitus'
    """
    s = _squash(text)
    for pattern in (_PARENS, _BRACKETS):
        prev = None
        while prev != s:
            prev, s = s, pattern.sub(" ", s)
    s = _tidy(_STRAY_BRACKETS.sub(" ", s))
    prev = None
    while prev != s:
        prev = s
        for rule in _SEGMENT_CUTS:
            cut = rule(s).strip()
            if cut:
                s = cut
        m = _WITHOUT.search(s)
        if (m and m.start() > 0 and len(m.group(1).split()) <= 5
                and not re.search(r",|\b(?:with|of)\b", m.group(1), re.I)
                and not m.group(1).lower().startswith(_KEEP_AFTER_WITHOUT)):
            s = s[:m.start()].strip()
        s = _tidy(s)
    s = _OR_UNSPECIFIED_SAME.sub(r"\1\2", s)            # "type II or unspecified type" -> "type II"
    for pattern in _INLINE:
        s = pattern.sub(" ", s)
    s = _CLAUSE_COMMA.sub(" ", _tidy(s))
    return _note_case(_tidy(s))


# --- rules 2-4: word order ------------------------------------------------------------------------

#: Words that read as modifiers in front of a noun, beyond those caught by their suffix.
_MODIFIER_WORDS = frozenset(
    "acute chronic subacute left right bilateral unilateral primary secondary benign malignant major "
    "minor severe mild moderate open closed recurrent congenital juvenile adult upper lower central "
    "intractable persistent paroxysmal permanent essential complete incomplete partial total early "
    "late deep superficial multiple single simple complex diffuse focal localized generalized "
    "familial acquired nontraumatic traumatic transient anterior posterior lateral medial inferior "
    "superior proximal distal viral bacterial fungal".split())
_MODIFIER_SUFFIXES = ("al", "ic", "ous", "ive", "ary", "ar", "ant", "ent", "ed", "ile", "oid")
_GRADED = re.compile(r"^(?:type|stage|grade|class|phase|degree|zone)\s+\S+$", re.I)

#: Words that make "X of Y" / "A, B" unsafe to reorder (clauses, residual categories).
_ORDER_STOP = frozenset(
    "and or with without in due to other specified by for from on at as the a an not following "
    "after during site sites part parts".split())
#: Heads of "X of Y" that do not invert ("use of insulin" is not "insulin use" in coding terms,
#: "history of ..." must stay a history).
_NO_INVERT = frozenset(
    "history use absence presence status encounter loss lack exposure contact removal fitting "
    "adjustment examination observation screening complication complications sequela sequelae "
    "effect effects".split())


def _is_modifier(word: str) -> bool:
    w = word.lower()
    if w in _MODIFIER_WORDS:
        return True
    return len(w) > 4 and w.isalpha() and w.endswith(_MODIFIER_SUFFIXES)


def reorder_of(text: str) -> str | None:
    """"X of Y" -> "Y X" when X has 1-2 words and Y 1-3 ("osteoarthritis of knee" -> "knee
    osteoarthritis"); a leading modifier of X stays in front ("malignant neoplasm of prostate" ->
    "malignant prostate neoplasm"). None when the text is not one short, clause-free "X of Y"."""
    if "," in text or text.lower().count(" of ") != 1:
        return None
    x, _, y = text.partition(" of ")
    xw, yw = x.split(), y.split()
    if not (1 <= len(xw) <= 2 and 1 <= len(yw) <= 3):
        return None
    if any(w.lower() in _ORDER_STOP for w in xw + yw) or xw[-1].lower() in _NO_INVERT:
        return None
    if len(xw) == 2 and _is_modifier(xw[0]):
        return f"{xw[0]} {y} {xw[1]}"
    return f"{y} {x}"


def reorder_comma(text: str) -> str | None:
    """"A, B" -> "B A" when B is a short modifier: 1-3 words that all read as modifiers ("pneumonia,
    viral" -> "viral pneumonia") or a grade such as "type 2" / "stage 4". None otherwise."""
    if text.count(",") != 1:
        return None
    a, _, b = (p.strip() for p in text.partition(","))
    bw = b.split()
    if not a or not (1 <= len(bw) <= 3) or any(w.lower() in _ORDER_STOP for w in bw):
        return None
    if not (_GRADED.match(b) or all(_is_modifier(w) for w in bw)):
        return None
    return f"{b.lower() if not any(_keep_case(w) for w in bw) else b} {a}"


_DUE_TO = re.compile(r"^(.+?)\s+due to\s+(.+)$", re.I)


def due_to_as_secondary(text: str) -> str | None:
    """"A due to B" -> "A secondary to B" (the first "due to" only); None without one."""
    m = _DUE_TO.match(text)
    if not m:
        return None
    return f"{m.group(1)} secondary to {m.group(2)}"


# --- rule 5: abbreviations ------------------------------------------------------------------------

_ABBREV_RE = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(k) for k in sorted(ABBREVIATIONS, key=lambda k: (-len(k), k)))
    + r")(?![\w-])", re.I)


def abbreviate(text: str) -> str | None:
    """Every :data:`ABBREVIATIONS` phrase in ``text`` replaced by its abbreviation (longest first,
    whole phrases only); None when nothing matched.

    >>> abbreviate("type 2 diabetes mellitus with diabetic chronic kidney disease")
    'T2DM with diabetic CKD'
    """
    out = _ABBREV_RE.sub(lambda m: ABBREVIATIONS[_squash(m.group(1)).lower()], text)
    return out if out != text else None


# --- rule 6: qualifiers ---------------------------------------------------------------------------

#: No qualifier is added when any of these words is present: the text already carries an acuity
#: or status ("acute", "stable", "history"), or describes an event, injury, neoplasm or pregnancy
#: where "known X" / "X, stable" reads as a past event or a different status code (a "known MI" is
#: an old MI, I25.2; a "known stroke" is a history or sequela code).
_NO_QUALIFIER = frozenset(
    "acute subacute stable unstable known history historical personal family status sequela "
    "sequelae suspected possible probable encounter initial subsequent fracture fx injury "
    "poisoning burn wound laceration dislocation sprain strain contusion abrasion bite pregnancy "
    "pregnant childbirth puerperium puerperal newborn neonatal perinatal gestation gestational "
    "screening observation exposure contact examination vaccination transplant exacerbation use other "
    "remission uncontrolled controlled infarction infarct mi ami stemi nstemi embolism pe thrombosis dvt stroke cva "
    "accident hemorrhage bleed attack tia arrest sepsis septic shock aki arf neoplasm carcinoma "
    "cancer tumor malignant lymphoma leukemia melanoma sarcoma metastasis metastatic".split())
#: The only conditions that get "chronic X": long-standing by nature, and ICD-10-CM has no
#: acute/chronic axis for them, so "chronic" cannot move the code. ("chronic" is not safe in
#: general: chronic bronchitis J42 vs bronchitis J40, chronic atrial fibrillation I48.20 vs I48.91.)
_CHRONIC_SAFE = frozenset({"hypertension", "hyperlipidemia", "hypothyroidism"})


def add_qualifiers(text: str) -> list[str]:
    """Up to two forms with note qualifiers that leave the code unchanged: "known X" (X
    abbreviated where :data:`ABBREVIATIONS` can), then "chronic X" for :data:`_CHRONIC_SAFE`
    conditions or "X, stable" otherwise. [] when any :data:`_NO_QUALIFIER` word is present.
    Never "history of X" (a Z86/Z87 code in ICD-10-CM)."""
    words = set(re.findall(r"[a-z0-9]+", text.lower()))
    if not words or words & _NO_QUALIFIER or "chronic" in words and "acute" in words:
        return []
    short = abbreviate(text) or text
    second = f"chronic {text}" if text.lower() in _CHRONIC_SAFE else f"{text}, stable"
    return [f"known {short}", second]


# --- combining ------------------------------------------------------------------------------------

def _dedup(forms: Iterable[str | None], limit: int) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for form in forms:
        if not form:
            continue
        form = _squash(form)
        key = form.lower()
        if not form or key in seen:
            continue
        seen.add(key)
        out.append(form)
        if len(out) >= limit:
            break
    return out


def phrasings(text: str, *, max_forms: int = 8, qualifiers: bool = True) -> list[str]:
    """Short phrasings clinicians use for an ontology description or inclusion term, the plain
    rewrite first.

    Order: the plain rewrite, its abbreviation, each reordered form (:func:`reorder_of`,
    :func:`reorder_comma`, :func:`due_to_as_secondary`) followed by its abbreviation, then the
    qualified forms. Deduplicated case-insensitively (first spelling kept), at most ``max_forms``
    (none when it is below 1), never an empty string; [] for text without a letter or digit.
    ``qualifiers=False`` leaves out :func:`add_qualifiers` (as :func:`code_phrasings` does for
    injury, external-cause, obstetric, perinatal and status/encounter codes).
    """
    if not isinstance(text, str) or max_forms < 1:
        return []
    plain = plain_rewrite(text)
    if not plain:
        fallback = _squash(text)
        return [fallback] if any(c.isalnum() for c in fallback) else []
    forms: list[str | None] = [plain, abbreviate(plain)]
    for rule in (reorder_of, reorder_comma, due_to_as_secondary):
        reordered = rule(plain)
        if reordered:
            forms += [reordered, abbreviate(reordered)]
    if qualifiers:
        forms += add_qualifiers(plain)
    return _dedup(forms, max_forms)


_ICD9_NO_QUALIFIER = ((630, 679), (760, 779), (800, 999))  # pregnancy, perinatal, injury/poisoning


def _qualifiable(code: str, system: object) -> bool:
    """Whether "known X" / "X, stable" can describe the code at all: diagnoses only, and not
    obstetric (O), perinatal (P), injury/poisoning (S, T), external-cause (V-Y) or
    status/encounter (Z) codes, nor their ICD-9-CM counterparts (630-679, 760-779, 800-999, V, E),
    where such a qualifier reads as a different episode of care or a history."""
    name = str(getattr(system, "value", system)).lower()
    if name == "icd10cm":
        return code[:1].upper() not in set("OPSTVWXYZ")
    if name == "icd9cm":
        if code[:1].upper() in ("V", "E"):
            return False
        try:
            head = int(code.split(".")[0])
        except ValueError:
            return False
        return not any(lo <= head <= hi for lo, hi in _ICD9_NO_QUALIFIER)
    return False


def code_phrasings(code: str, system: str = "icd10cm", *, ontology=None,
                   index_terms: Mapping[str, Sequence[str]] | None = None,
                   max_forms: int = 12) -> list[tuple[str, str]]:
    """(phrase, kind) pairs for one code: kind is "description", "inclusion", "index" (from
    index_terms[code]) or "rewrite".

    The description's plain rewrite is kind "description"; inclusion terms' plain rewrites
    "inclusion"; index terms "index"; every other rule output "rewrite". Empty list for an unknown
    code.

    Listed in this order, so a small ``max_forms`` keeps the most useful: the description, the
    description's reworded forms (abbreviations, reorderings: the code's own wording in note form),
    the inclusion terms, the index phrases, the reworded forms of inclusion terms and index phrases,
    and last the qualified forms (:func:`add_qualifiers`; left out for codes where a qualifier
    could read as another episode or a history, see :func:`_qualifiable`). Deduplicated
    case-insensitively across kinds (the first kind wins), at most ``max_forms``. ``index_terms``
    is keyed by canonical code (as :func:`~icdcoder.ontology.index_terms.load_index_terms` gives
    it); the code as passed is tried too.
    """
    if max_forms < 1:
        return []
    if ontology is None:
        from icdcoder.ontology import get_ontology
        ontology = get_ontology()
    info = ontology.lookup(code, system)
    if info is None:
        return []
    qualify = _qualifiable(info.code, info.system)

    def forms_of(text: str | None) -> tuple[list[str], list[str]]:
        """(rule outputs without qualifiers, plain first; qualified forms)"""
        if not isinstance(text, str):
            return [], []
        forms = phrasings(text, max_forms=64, qualifiers=False)
        plain = plain_rewrite(text)
        return forms, (add_qualifiers(plain) if qualify and plain else [])

    desc, desc_q = forms_of(info.description)
    inclusions = [forms_of(t) for t in info.inclusion_terms]
    index: list[tuple[str, list[str], list[str]]] = []
    if index_terms:
        raw = index_terms.get(info.code) or index_terms.get(code) or []
        # an index phrase is already note wording: kept as given; every rule output (its plain
        # rewrite included, where that differs) is a rewrite
        index = [(_squash(t), *forms_of(t)) for t in raw if isinstance(t, str) and _squash(t)]

    pairs: list[tuple[str, str]] = [(p, "description") for p in desc[:1]]
    pairs += [(p, "rewrite") for p in desc[1:]]
    pairs += [(forms[0], "inclusion") for forms, _ in inclusions if forms]
    pairs += [(p, "index") for p, _, _ in index]
    pairs += [(p, "rewrite") for forms, _ in inclusions for p in forms[1:]]
    pairs += [(p, "rewrite") for _, forms, _ in index for p in forms]
    pairs += [(p, "rewrite") for q in [desc_q, *(q for _, q in inclusions), *(q for _, _, q in index)]
              for p in q]

    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for phrase, kind in pairs:
        if not phrase or phrase.lower() in seen:
            continue
        seen.add(phrase.lower())
        out.append((phrase, kind))
        if len(out) >= max_forms:
            break
    return out
