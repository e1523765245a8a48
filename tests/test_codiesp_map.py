"""CodiEsp's MAP: the official script's figure on fixed files, computed by hand below, and the same
figure from icdcoder's own predictions through the protocol.

tests/fixtures/codiesp_map holds a gold file, a submission and a valid-codes list in the official
CodiEsp-D layout. By hand (AP = sum over gold codes found at submitted rank k of hits/k, / |gold|):

- A: gold {n44.8, r52, a23.9}; submitted r60.9, n44.8, n44.8 (repeat: dropped), zz99 (not a valid code:
  dropped), a23.9.
  In code order (today's trectools): a23.9 (1/1), n44.8 (2/2), r60.9 -> (1 + 1) / 3 = 0.6667.
  In submitted order (trectools 0.0.42): r60.9, n44.8 (1/2), a23.9 (2/3) -> 1.1667 / 3 = 0.3889.
- B: gold {i10, e11.9}; submitted e11.9, i83.90, i10.
  Code order: e11.9 (1/1), i10 (2/2), i83.90 -> 2 / 2 = 1.
  Submitted order: e11.9 (1/1), i83.90, i10 (2/3) -> 1.6667 / 2 = 0.8333.
- C: gold {j18.9}; submitted r50.9 -> 0.
- D: gold {k35.80}; nothing submitted -> left out of the mean.
- E: no gold; submitted z20.818 -> 0, and counted.
MAP = (0.6667 + 1 + 0 + 0) / 4 = 0.4167 (code order), (0.3889 + 0.8333 + 0 + 0) / 4 = 0.3056 (submitted
order). Both were also checked against the script's steps run with trectools 0.0.50 and 0.0.42.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icdcoder.data.note import Note
from icdcoder.data.store import write_dataset
from icdcoder.errors import DataError
from icdcoder.evaluation import evaluate_files
from icdcoder.evaluation.codiesp import map_of_files, read_tsv, write_submission
from icdcoder.prediction import Prediction, write_predictions

FIX = Path(__file__).parent / "fixtures" / "codiesp_map"
GOLD, PRED, VALID = FIX / "gold_D.tsv", FIX / "pred_D.tsv", FIX / "valid_codes_D.tsv"


def test_official_map_of_the_fixture_files_by_hand():
    assert round(map_of_files(GOLD, PRED, VALID)[0], 3) == 0.417
    assert map_of_files(GOLD, PRED, VALID)[1] == 4  # A, B, C, E; D submitted nothing
    assert round(map_of_files(GOLD, PRED, VALID, order="ranked")[0], 3) == 0.306
    # without the valid-codes list zz99 stays: it sorts last by code, but takes rank 3 in submitted order
    assert round(map_of_files(GOLD, PRED)[0], 3) == 0.417
    # A: r60.9, n44.8 (1/2), zz99, a23.9 (2/4) -> 1/3; B 0.8333 -> (0.3333 + 0.8333) / 4
    assert round(map_of_files(GOLD, PRED, order="ranked")[0], 3) == 0.292


def test_reading_the_tsv_keeps_order_drops_repeats_and_names_bad_lines(tmp_path):
    assert read_tsv(PRED)["A"] == ["r60.9", "n44.8", "zz99", "a23.9"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("A\tn44.8\nA n44.8\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_tsv(bad)
    assert "bad.tsv:2" in str(e.value)


def _scored(id: str, pairs: list[tuple[str, float]]) -> Prediction:
    return Prediction.from_scores(id, dict(pairs))


def test_protocol_codiesp_map_counts_submitted_codes_only_and_matches_the_files(tmp_path):
    """The same case as icdcoder data and predictions: candidates below the threshold (0.5) move the
    ranked-list MAP but not CodiEsp's, and the exported submission scores the same with the file scorer."""
    gold = read_tsv(GOLD)
    notes = [Note(id=i, text=f"note {i}", codes=[c.upper() for c in gold.get(i, [])],
                  code_systems={c.upper(): "icd10cm" for c in gold.get(i, [])}) for i in "ABCDE"]
    data = tmp_path / "data"
    write_dataset([("test", n) for n in notes], data, name="map", source="test")
    preds = [_scored("A", [("R60.9", .9), ("N44.8", .8), ("A23.9", .7), ("R52", .2)]),
             _scored("B", [("E11.9", .9), ("I83.90", .8), ("I10", .6), ("J18.9", .1)]),
             _scored("C", [("R50.9", .9), ("J18.9", .3)]),
             _scored("D", [("K35.80", .2)]),
             _scored("E", [("Z20.818", .9)])]
    pred_path = tmp_path / "run" / "predictions.jsonl"
    pred_path.parent.mkdir()
    write_predictions(preds, pred_path)
    (pred_path.parent / "threshold.json").write_text(json.dumps({"threshold": 0.5}))
    m = evaluate_files(data, "test", pred_path)
    assert round(m["codiesp_map"], 3) == 0.417 and m["codiesp_map_notes"] == 4
    assert round(m["codiesp_map_ranked"], 3) == 0.306
    # the ranked-list MAP reads every candidate (R52, J18.9, K35.80 below the threshold) and skips E
    assert round(m["map"], 3) == round((1 / 2 + 2 / 3 + 3 / 4) / 3 / 4 + (1 + 2 / 3) / 2 / 4 + 1 / 2 / 4 + 1 / 4, 3)
    sub = tmp_path / "submission.tsv"
    assert write_submission(preds, sub, threshold=0.5) == 8
    assert read_tsv(sub)["A"] == ["r60.9", "n44.8", "a23.9"]
    assert round(map_of_files(GOLD, sub)[0], 6) == round(m["codiesp_map"], 6)
    assert round(map_of_files(GOLD, sub, order="ranked")[0], 6) == round(m["codiesp_map_ranked"], 6)


def test_export_codiesp_command_writes_the_submission_at_the_stored_threshold(tmp_path):
    from typer.testing import CliRunner

    from icdcoder.cli import app

    run = tmp_path / "run"
    run.mkdir()
    write_predictions([_scored("A", [("N44.8", .9), ("R52", .4)]), _scored("B", [("I10", .2)])],
                      run / "predictions.jsonl")
    out = tmp_path / "sub.tsv"
    r = CliRunner().invoke(app, ["export", "codiesp", str(run / "predictions.jsonl"), "--out", str(out)])
    assert r.exit_code != 0 and "no threshold" in (r.output + str(r.exception))
    (run / "threshold.json").write_text(json.dumps({"threshold": 0.3}))
    r = CliRunner().invoke(app, ["export", "codiesp", str(run / "predictions.jsonl"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text() == "A\tn44.8\nA\tr52\n"
