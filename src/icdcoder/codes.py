"""Code systems and normalisation: one function turns any spelling of a code into its canonical form.

Canonical forms (what every file and model in icdcoder uses):

==============  =========================  =================================================
system          canonical examples         rule
==============  =========================  =================================================
``icd9cm``      ``428.0`` ``V45.81``       diagnoses: dot after 3 characters, 4 for E-codes
                ``E812.0`` ``401``
``icd9pcs``     ``38.93`` ``00``           ICD-9-CM volume 3 procedures: dot after 2 digits
``icd10cm``     ``I50.9`` ``S72.001A``     dot after 3 characters
``icd10pcs``    ``0DTJ4ZZ`` ``0DTJ``       7 characters, no dot; 3-6 character prefixes are
                                           kept as partial codes (CodiEsp uses 4)
==============  =========================  =================================================

Input may be dotted or not, any case, with surrounding blanks. The dotted ICD-9 forms of diagnoses
(3 digits before the dot) and procedures (2 digits) never collide, which is why the canonical form
keeps the dot.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple


class CodeSystem(str, Enum):
    ICD9CM = "icd9cm"
    ICD9PCS = "icd9pcs"
    ICD10CM = "icd10cm"
    ICD10PCS = "icd10pcs"

    @property
    def version(self) -> int:
        return 9 if self in (CodeSystem.ICD9CM, CodeSystem.ICD9PCS) else 10

    @property
    def is_procedure(self) -> bool:
        return self in (CodeSystem.ICD9PCS, CodeSystem.ICD10PCS)


_ALIASES = {
    "icd9": CodeSystem.ICD9CM, "icd9cm": CodeSystem.ICD9CM, "icd9dx": CodeSystem.ICD9CM,
    "icd9pcs": CodeSystem.ICD9PCS, "icd9px": CodeSystem.ICD9PCS, "icd9proc": CodeSystem.ICD9PCS,
    "icd10": CodeSystem.ICD10CM, "icd10cm": CodeSystem.ICD10CM, "icd10dx": CodeSystem.ICD10CM,
    "icd10pcs": CodeSystem.ICD10PCS, "icd10px": CodeSystem.ICD10PCS, "icd10proc": CodeSystem.ICD10PCS,
}


def parse_system(name: str | CodeSystem) -> CodeSystem:
    """Accept ``icd10cm``, ``ICD-10-CM``, ``icd9_pcs`` ... and return the enum member."""
    if isinstance(name, CodeSystem):
        return name
    key = re.sub(r"[^a-z0-9]", "", str(name).lower())
    if key not in _ALIASES:
        raise ValueError(f"unknown code system {name!r}; expected one of {[s.value for s in CodeSystem]}")
    return _ALIASES[key]


class CodeFormatError(ValueError):
    """A string that is not a well-formed code of the system it was said to belong to."""


class Code(NamedTuple):
    code: str
    system: CodeSystem

    def __str__(self) -> str:
        return self.code


# re.ASCII: without it \d also matches other scripts' digits ("٤٢٨٠" would become "٤٢٨.٠")
_ICD9_DX = re.compile(r"^(?:(\d{3})(\d{0,2})|(V\d{2})(\d{0,2})|(E\d{3})(\d?))$", re.ASCII)
_ICD9_PX = re.compile(r"^(\d{2})(\d{0,2})$", re.ASCII)
_ICD10_CM = re.compile(r"^([A-Z](?:\d[0-9A-Z]|A\d))([0-9A-Z]{0,4})$", re.ASCII)  # QA0 (2026) has a letter second
_ICD10_PCS = re.compile(r"^[0-9A-HJ-NP-Z]{3,7}$")  # PCS never uses I or O; <7 chars = partial code


def _squash(raw: str) -> str:
    """Without blanks and dots, upper case. Only ASCII is upper-cased: "ı", "ſ" and "ﬁ" would turn
    into "I", "S" and "FI" and so spell a code they are not; left as they are, they match no shape."""
    s = raw.strip().replace(".", "").replace(" ", "")
    return s.upper() if s.isascii() else s


def normalize_code(raw: str, system: str | CodeSystem) -> str:
    """Canonical form of ``raw`` in ``system``; raises CodeFormatError when it cannot be one.

    >>> normalize_code("4280", "icd9cm"), normalize_code("e8120", "icd9cm"), normalize_code("3893", "icd9pcs")
    ('428.0', 'E812.0', '38.93')
    >>> normalize_code("i509", "icd10cm"), normalize_code("0dtj4zz", "icd10pcs")
    ('I50.9', '0DTJ4ZZ')
    """
    system = parse_system(system)
    if not isinstance(raw, str):
        raise CodeFormatError(f"code must be a string, got {type(raw).__name__}")
    s = _squash(raw)
    if system is CodeSystem.ICD9CM:
        m = _ICD9_DX.match(s)
        if not m:
            raise CodeFormatError(f"{raw!r} is not an ICD-9-CM diagnosis code")
        head, tail = [g for g in m.groups() if g is not None]
    elif system is CodeSystem.ICD9PCS:
        m = _ICD9_PX.match(s)
        if not m:
            raise CodeFormatError(f"{raw!r} is not an ICD-9-CM procedure code")
        head, tail = m.groups()
    elif system is CodeSystem.ICD10CM:
        m = _ICD10_CM.match(s)
        if not m:
            raise CodeFormatError(f"{raw!r} is not an ICD-10-CM code")
        head, tail = m.groups()
    else:
        if not _ICD10_PCS.match(s):
            raise CodeFormatError(f"{raw!r} is not an ICD-10-PCS code")
        return s
    return f"{head}.{tail}" if tail else head


def strip_dot(code: str) -> str:
    """The undotted form that CMS files and some packages use (``428.0`` -> ``4280``)."""
    return code.replace(".", "")


def infer_system(raw: str, *, version: int | None = None, procedure: bool | None = None) -> CodeSystem:
    """Best guess of the system of a code written without one, from its shape.

    Shapes overlap (``3893`` is a valid ICD-9 diagnosis and procedure; ``V45.81`` exists in both
    versions), so a source that knows the system passes it to :func:`normalize_code` instead. Rules:
    a 7-character code starting with a digit is ICD-10-PCS; letter + digit + character is ICD-10-CM,
    except ICD-9 shapes ``V`` + digits only and ``E`` + 3 digits + dot; a dot after 2 digits is an
    ICD-9 procedure; other digit codes are ICD-9 diagnoses unless ``procedure`` is set.
    """
    s = str(raw).strip()
    q = _squash(s)
    dot = s.find(".")
    if version != 9:
        pcs_shape = len(q) == 7 and q[0].isdigit()
        if procedure and version is None:  # 2-4 digits read as ICD-9 procedures unless version=10
            pcs_shape = pcs_shape or not (q.isdigit() and len(q) <= 4)
        if procedure is not False and _ICD10_PCS.match(q) and (pcs_shape or (procedure and version == 10)):
            return CodeSystem.ICD10PCS
        if procedure is not True and _ICD10_CM.match(q):
            icd9_shape = version is None and (
                (q[0] == "V" and q[1:].isdigit()) or (q[0] == "E" and dot == 4)
            )
            if not icd9_shape:
                return CodeSystem.ICD10CM
    if version != 10:
        if procedure is not False and _ICD9_PX.match(q) and (procedure or dot == 2):
            return CodeSystem.ICD9PCS
        if procedure is not True and _ICD9_DX.match(q):
            return CodeSystem.ICD9CM
    raise CodeFormatError(f"cannot tell the code system of {raw!r}")


def parse_code(raw: str, system: str | CodeSystem | None = None) -> Code:
    """Normalise with a known system, or infer one from the shape when none is given."""
    sys_ = parse_system(system) if system is not None else infer_system(raw)
    return Code(normalize_code(raw, sys_), sys_)
