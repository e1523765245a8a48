import pytest

from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, normalize_code, parse_code, parse_system, strip_dot


@pytest.mark.parametrize("raw,system,expected", [
    # ICD-9-CM diagnoses: dot after 3 characters, after 4 for E-codes
    ("4280", "icd9cm", "428.0"), ("428.0", "icd9cm", "428.0"), (" 428.0 ", "icd9cm", "428.0"),
    ("25000", "icd9cm", "250.00"), ("401", "icd9cm", "401"), ("v4581", "icd9cm", "V45.81"),
    ("E8120", "icd9cm", "E812.0"), ("e812.0", "icd9cm", "E812.0"), ("E849", "icd9cm", "E849"),
    # ICD-9-CM procedures: dot after 2 digits
    ("3893", "icd9pcs", "38.93"), ("38.93", "icd9pcs", "38.93"), ("00", "icd9pcs", "00"), ("966", "icd9pcs", "96.6"),
    # ICD-10-CM: dot after 3 characters, 7th characters kept
    ("I509", "icd10cm", "I50.9"), ("i50.9", "icd10cm", "I50.9"), ("I10", "icd10cm", "I10"),
    ("s72001a", "icd10cm", "S72.001A"), ("C4A.111", "icd10cm", "C4A.111"), ("n44.8", "icd10cm", "N44.8"),
    ("qa00", "icd10cm", "QA0.0"),
    # ICD-10-PCS: no dot; CodiEsp's 4-character prefixes kept as partial codes
    ("0dtj4zz", "icd10pcs", "0DTJ4ZZ"), ("0DTJ4ZZ", "icd10pcs", "0DTJ4ZZ"), ("0D.TJ4ZZ", "icd10pcs", "0DTJ4ZZ"),
    ("bw03zzz", "icd10pcs", "BW03ZZZ"), ("0ttb", "icd10pcs", "0TTB"),
])
def test_normalize_all_four_systems(raw, system, expected):
    assert normalize_code(raw, system) == expected
    assert normalize_code(expected, system) == expected  # idempotent


@pytest.mark.parametrize("raw,system", [
    ("42", "icd9cm"), ("428000", "icd9cm"), ("X123", "icd9cm"), ("E81", "icd9cm"),
    ("3", "icd9pcs"), ("38934", "icd9pcs"), ("A3893", "icd9pcs"),
    ("150.9", "icd10cm"), ("I5", "icd10cm"), ("I50.91234", "icd10cm"),
    ("0DTJ4ZZZ", "icd10pcs"), ("0DTI4ZZ", "icd10pcs"), ("0D", "icd10pcs"), ("", "icd10cm"),
])
def test_malformed_codes_raise(raw, system):
    with pytest.raises(CodeFormatError):
        normalize_code(raw, system)


@pytest.mark.parametrize("raw,system", [
    ("٤٢٨٠", "icd9cm"), ("３８９３", "icd9pcs"), ("ı10", "icd10cm"), ("ſ72001a", "icd10cm"), ("0dtj4zﬃ", "icd10pcs"),
])
def test_only_ascii_spells_a_code(raw, system):
    # other scripts' digits, and letters that upper-case into ASCII (tests/test_properties.py found
    # "٤٢٨٠" normalised to "٤٢٨.٠")
    with pytest.raises(CodeFormatError):
        normalize_code(raw, system)
    with pytest.raises(CodeFormatError):
        parse_code(raw)


def test_system_names_and_properties():
    assert parse_system("ICD-10-CM") is CodeSystem.ICD10CM
    assert parse_system("icd9_pcs") is CodeSystem.ICD9PCS
    assert CodeSystem.ICD9PCS.version == 9 and CodeSystem.ICD9PCS.is_procedure
    assert CodeSystem.ICD10CM.version == 10 and not CodeSystem.ICD10CM.is_procedure
    with pytest.raises(ValueError, match="unknown code system"):
        parse_system("snomed")
    assert strip_dot("428.0") == "4280"


@pytest.mark.parametrize("raw,kw,expected", [
    ("428.0", {}, CodeSystem.ICD9CM), ("4280", {}, CodeSystem.ICD9CM), ("E812.0", {}, CodeSystem.ICD9CM),
    ("V45.81", {}, CodeSystem.ICD9CM), ("38.93", {}, CodeSystem.ICD9PCS), ("3893", {"procedure": True}, CodeSystem.ICD9PCS),
    ("I50.9", {}, CodeSystem.ICD10CM), ("E11.9", {}, CodeSystem.ICD10CM), ("E119", {}, CodeSystem.ICD10CM),
    ("S72.001A", {}, CodeSystem.ICD10CM), ("0DTJ4ZZ", {}, CodeSystem.ICD10PCS),
    ("0270", {"procedure": True, "version": 10}, CodeSystem.ICD10PCS), ("V4581", {"version": 10}, CodeSystem.ICD10CM),
])
def test_infer_system(raw, kw, expected):
    assert infer_system(raw, **kw) is expected


def test_parse_code_keeps_system():
    code = parse_code("e119")
    assert code.code == "E11.9" and code.system is CodeSystem.ICD10CM and str(code) == "E11.9"
    assert parse_code("3893", "icd9pcs") == ("38.93", CodeSystem.ICD9PCS)
    with pytest.raises(CodeFormatError):
        infer_system("hello")
