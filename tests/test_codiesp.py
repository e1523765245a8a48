from collections import Counter

import pytest

from icdcoder.data.codecheck import CodeResolver
from icdcoder.data.codiesp import iter_codiesp
from icdcoder.errors import DataError


def _load(root, **kw):
    resolver = kw.pop("resolver", CodeResolver(check_ontology=False))
    notes = Counter()
    pairs = Counter()
    codes: dict[str, set] = {}
    out = []
    for split, note in iter_codiesp(root, resolver=resolver, **kw):
        notes[split] += 1
        pairs[split] += len(note.codes)
        codes.setdefault(split, set()).update(note.codes)
        out.append((split, note))
    return notes, pairs, {k: len(v) for k, v in codes.items()}, out


def test_shared_copy_counts_match_the_tsvs(codiesp_root):
    # counts of the distributed TSVs: train 500 notes / 5,639 diagnosis pairs / 1,767 codes; dev 250 / 2,677 / 1,158
    notes, pairs, codes, out = _load(codiesp_root, lang="en", kind="diagnoses")
    assert notes == {"train": 500, "val": 250}
    assert pairs == {"train": 5639, "val": 2677}
    assert codes == {"train": 1767, "val": 1158}
    note = next(n for s, n in out if n.id == "S0004-06142005000700014-1")
    assert {"N44.8", "Z20.818", "R60.9"} <= set(note.codes)
    assert note.text.startswith("We describe the case of a 37-year-old man")
    assert note.spans == []  # offsets index the Spanish text
    assert any(e["code"] == "N44.8" and e["text"] == "teste derecho aumentado de tamaño" for e in note.metadata["evidence_es"])


def test_shared_copy_procedures_and_spanish_spans(codiesp_root):
    raw_pairs = {s: sum(1 for _ in open(codiesp_root / s / f"{s}P.tsv", encoding="utf-8")) for s in ("train", "dev")}
    notes, pairs, _, out = _load(codiesp_root, lang="es", kind="procedures")
    # every case has a text, even those without procedures
    assert notes == {"train": 500, "val": 250}
    assert pairs == {"train": raw_pairs["train"], "val": raw_pairs["dev"]}
    note = next(n for s, n in out if n.id == "S0004-06142005000700014-1")
    assert {"BW03ZZZ", "3E02329"} <= set(note.codes)
    quotes = {note.evidence_text(sp) for sp in note.spans if sp.code == "BW03ZZZ"}
    assert quotes == {"Rx tórax"}
    # a discontinuous quote ("2787 2801;2810 2823") becomes two spans of the same code
    assert len([sp for sp in note.spans if sp.code == "3E02329"]) == 2
    assert all(sp.code in n.codes for _, n in out for sp in n.spans)


def _mini(tmp_path, d="a1\tI10\n", x="", text="Hypertension.", p=None):
    root = tmp_path / "codiesp"
    (root / "train" / "text_files").mkdir(parents=True)
    (root / "train" / "text_files_en").mkdir()
    (root / "train" / "trainD.tsv").write_text(d, encoding="utf-8")
    (root / "train" / "trainP.tsv").write_text(p or "", encoding="utf-8")
    (root / "train" / "trainX.tsv").write_text(x, encoding="utf-8")
    for sub in ("text_files", "text_files_en"):
        (root / "train" / sub / "a1.txt").write_text(text, encoding="utf-8")
    return root


def test_test_folder_loads_the_same_way(tmp_path):
    root = _mini(tmp_path)
    (root / "train").rename(root / "test")
    for p in (root / "test").glob("train*.tsv"):
        p.rename(p.with_name(p.name.replace("train", "test")))
    notes, _, _, out = _load(root)
    assert notes == {"test": 1} and out[0][1].codes == ["I10"]


@pytest.mark.parametrize("kw,match", [
    ({"d": "a1\tI10\textra\n"}, r"trainD.tsv:1: expected 2 tab-separated fields"),
    ({"d": "a1\t\n"}, r"trainD.tsv:1, field 'code': empty value"),
    ({"d": "a1\tI10\nzz\tI10\n"}, r"have codes but no text file .*'zz'"),
    ({"x": "a1\tDIAGNOSTICO\ti10\tHyper\t0 x\n"}, r"trainX.tsv:1, field 'offsets'"),
    ({"x": "a1\tDIAGNOSTICO\ti10\tHyper\t5 2\n"}, r"trainX.tsv:1, field 'offsets': offset end 2 is before"),
    ({"x": "a1\tOTRO\ti10\tHyper\t0 5\n"}, r"trainX.tsv:1, field 'type'"),
    ({"x": "a1\tDIAGNOSTICO\ti10\tHyper\t0 500\n"}, r"run past the end"),
    ({"text": "   "}, r"a1.txt: note text is empty"),
])
def test_bad_input_names_file_line_field(tmp_path, kw, match):
    root = _mini(tmp_path, **kw)
    with pytest.raises(DataError, match=match):
        _load(root, lang="es")


def test_non_utf8_and_bad_codes(tmp_path):
    root = _mini(tmp_path)
    (root / "train" / "trainD.tsv").write_bytes(b"a1\tI10\na1\tJ\xe918.9\n")
    with pytest.raises(DataError, match=r"trainD.tsv:2: not valid UTF-8"):
        _load(root)
    root2 = _mini(tmp_path / "b", d="a1\tI10\na1\t999999\n")
    resolver = CodeResolver(check_ontology=False)
    _, pairs, _, _ = _load(root2, resolver=resolver)
    assert pairs == {"train": 1}
    assert resolver.report() == {"malformed_icd10cm_code": {"count": 1, "examples": ["999999"]}}
    with pytest.raises(DataError, match=r"trainD.tsv:2, field 'code': '999999' is not an ICD-10-CM code"):
        _load(root2, resolver=CodeResolver(strict=True, check_ontology=False))
    with pytest.raises(DataError, match="no CodiEsp split folder"):
        _load(tmp_path / "nowhere")
