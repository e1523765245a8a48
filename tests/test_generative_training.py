"""What makes generative training affordable and honest on CPU: training only the top layers, training
prompts that never show a note its own codes, cross-fitted candidate lists, and a bounded PHI scan."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from icdcoder.coders import coder_class  # noqa: E402
from icdcoder.training import stages  # noqa: E402
from icdcoder.training.trl_common import LoraSettings, TrainSettings, freeze_lower_layers, prepare_weights  # noqa: E402
from tests.test_generative import GEN, PROMPT, TINY, corpus  # noqa: E402,F401  (corpus: fixture)

TINY2 = {**TINY, "layers": 3}


def _tiny_llama(layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def test_train_layers_leaves_only_the_top_blocks_and_final_norm_trainable():
    model = _tiny_llama(3)
    counts = freeze_lower_layers(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.2.", "model.norm.")) for n in trainable)
    assert any(n.startswith("model.norm.") for n in trainable)
    assert not model.model.embed_tokens.weight.requires_grad and not model.lm_head.weight.requires_grad
    assert counts["trainable_parameters"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert counts["trainable_parameters"] < counts["parameters"]
    # a backward pass leaves the frozen lower layers without gradients
    x = torch.randint(0, 64, (2, 8))
    model(input_ids=x, labels=x).loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is None
    assert model.model.layers[2].mlp.up_proj.weight.grad is not None


def test_train_layers_is_checked_and_refused_with_lora():
    with pytest.raises(ValueError, match="between 1 and the model's 3 layers"):
        freeze_lower_layers(_tiny_llama(3), 4)
    with pytest.raises(ValueError, match="with LoRA"):
        prepare_weights(_tiny_llama(3), TrainSettings(train_layers=1, lora=LoraSettings(r=4)))
    model = _tiny_llama(3)
    freeze_lower_layers(model, 1)
    assert prepare_weights(model, TrainSettings()) == {}  # train_layers 0: every weight trains again
    assert all(p.requires_grad for p in model.parameters())


def test_sft_with_train_layers_changes_only_the_top_layer(corpus, tmp_path):
    train, _ = corpus
    coder = coder_class("llm_sft")(tiny=TINY2, prompt=PROMPT, generation=GEN, checkpoint_dir=str(tmp_path / "ck"),
                                   sft={"max_steps": 2, "batch_size": 4, "lr": 1e-2, "save_steps": 100,
                                        "logging_steps": 1, "train_layers": 1})
    coder._prepare(train)  # the tiny LM before SFT
    from icdcoder.coders.generative.backends import load_causal_lm

    before = {k: v.clone() for k, v in load_causal_lm(coder.lm_path).state_dict().items()}
    coder.fit(train)
    after = coder.lm()[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.2.", "model.norm.")) for k in changed)
    assert coder.history[-1]["trainable_parameters"] < coder.history[-1]["parameters"]
    assert all(p.requires_grad for p in coder.lm()[0].parameters())  # frozen for that run only


def _capture_rows(monkeypatch):
    rows = []

    def fake_sft(model, tok, data, settings, out, **kw):
        rows.extend(data)
        return model, {"global_step": 0}

    monkeypatch.setattr(stages, "run_sft", fake_sft)
    return rows


def _listed(messages):
    content = messages[-1]["content"]
    if "Candidate codes:\n" not in content:
        return []
    block = content.split("Candidate codes:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split(" ", 1)[0] for line in block.splitlines()]


def test_sft_prompts_never_show_a_note_itself_as_example_or_candidate_source(corpus, monkeypatch):
    train, _ = corpus
    rows = _capture_rows(monkeypatch)
    coder = coder_class("llm_sft")(tiny=TINY, prompt={**PROMPT, "few_shot": 1, "candidates": 3}, generation=GEN,
                                   sft={"max_steps": 1})
    coder.fit(train)
    assert len(rows) == len(train)
    for note, row in zip(train, rows):
        example_note = row["prompt"][1]["content"]
        assert note.text[:200] not in example_note  # the few-shot example is another note
        pool = coder._pool
        expected = pool.candidates(note.text, 3, exclude=note.text)
        assert _listed(row["prompt"]) == expected


def test_candidates_from_a_coder_without_out_of_fold_rankings_are_cross_fitted(corpus, tmp_path, monkeypatch):
    """A TF-IDF candidate source: a new note gets its ranking; a training note the ranking of a copy fitted
    without the note's fold, so the gold codes are not handed to the LM for free."""
    train, test = corpus
    tfidf = coder_class("tfidf")(min_df=1).fit(train)
    tfidf.save(tmp_path / "tfidf")
    rows = _capture_rows(monkeypatch)
    coder = coder_class("llm_sft")(tiny=TINY, generation=GEN, sft={"max_steps": 1},
                                   prompt={**PROMPT, "candidates": 4, "candidates_from": str(tmp_path / "tfidf")})
    coder.fit(train)
    assert set(coder._oof_candidates) == {n.id for n in train}
    in_sample = {n.id: [c.code for c in p.codes[:4]] for n, p in zip(train, tfidf.predict(train))}
    for note, row in zip(train, rows):
        assert _listed(row["prompt"]) == [c for c, _ in coder._oof_candidates[note.id]]
    # out-of-fold lists miss gold codes that the in-sample lists (fitted on the note) recover
    def recall(lists):
        return sum(len(set(n.codes) & set(lists[n.id])) for n in train) / sum(len(n.codes) for n in train)
    assert recall({k: [c for c, _ in v] for k, v in coder._oof_candidates.items()}) < recall(in_sample)
    # each held-out fold is ranked by a model that never saw it: reproduce one fold by hand
    from icdcoder.data.splits import kfold_of

    fold_of = kfold_of(len(train), coder.CANDIDATE_FOLDS, coder.seed)
    inside = [n for n, f in zip(train, fold_of) if f != 0]
    held = [n for n, f in zip(train, fold_of) if f == 0]
    ref = coder_class("tfidf")(**tfidf.params).fit(inside)
    for n, p in zip(held, ref.predict(held)):
        assert coder._oof_candidates[n.id] == [[c.code, round(c.score, 4)] for c in p.codes[:4]]
    # a new note: the saved coder's own ranking
    assert _listed(coder.messages(test[0])) == [c.code for c in tfidf.predict([test[0]])[0].codes[:4]]
    # a prompting coder trains nothing: no cross-fitting
    prompt = coder_class("llm_prompt")(tiny=TINY, generation=GEN,
                                       prompt={**PROMPT, "candidates": 4, "candidates_from": str(tmp_path / "tfidf")})
    prompt.fit(train)
    assert prompt._oof_candidates == {}


def test_candidate_constrained_decoding_writes_only_each_notes_candidates(corpus, tmp_path):
    """generation.constrained: candidates - a well-formed answer made of the codes its own prompt lists."""
    train, test = corpus
    coder_class("tfidf")(min_df=1).fit(train).save(tmp_path / "tfidf")
    prompt = {**PROMPT, "candidates": 3, "candidates_from": str(tmp_path / "tfidf")}
    coder = coder_class("llm_prompt")(tiny=TINY, prompt=prompt, generation={**GEN, "constrained": "candidates"})
    coder.fit(train)
    preds = coder.predict(test)
    assert coder.last_predict_stats.get("malformed", 0) == 0
    listed = [{c for c, *_ in coder.prompt_candidates(n)} for n in test]
    assert all({c.code for c in p.codes} <= cands for p, cands in zip(preds, listed))
    assert any(p.codes for p in preds)
    free = coder_class("llm_prompt")(tiny=TINY, prompt=prompt, generation=GEN)
    free.fit(train)
    free.predict(test)
    assert free.last_predict_stats.get("malformed", 0) > 0  # the untrained tiny LM alone writes junk
    with pytest.raises(Exception, match="needs prompt.candidates"):
        coder_class("llm_prompt")(tiny=TINY, prompt=PROMPT, generation={**GEN, "constrained": "candidates"}).fit(
            train).predict(test[:1])


def test_phi_scans_only_a_sample_of_training_notes(corpus, tmp_path, monkeypatch):
    train, _ = corpus
    coder = coder_class("llm_phi")(tiny=TINY, prompt=PROMPT, generation=GEN, checkpoint_dir=str(tmp_path / "ck"),
                                   sft={"max_steps": 1, "batch_size": 4, "save_steps": 100},
                                   grpo={"max_steps": 1, "batch_size": 4, "num_generations": 2,
                                         "max_completion_length": 8, "save_steps": 100},
                                   phi={"rounds": 1, "scan_notes": 7, "max_notes_per_round": 2})
    scanned = []
    real = coder.generate_sets

    def spy(notes, **kw):
        scanned.append(len(notes))
        return real(notes, **kw)

    monkeypatch.setattr(coder, "generate_sets", spy)
    coder.fit(train)
    assert scanned == [7]
    (round1,) = coder.history[-1]["rounds"]
    assert round1["scanned"] == 7 and round1["pool"] <= 2


def test_compact_lm_head_on_cpu_gives_the_same_loss_and_gradients():
    """TRL's fused LM head scores every position on CPU; compacted to the labelled ones it must agree."""
    from trl.trainer.utils import add_fused_lm_head

    from icdcoder.training.trl_common import compact_lm_head_on_cpu

    torch.manual_seed(0)
    model = _tiny_llama(2)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    x = torch.randint(0, 64, (2, 12))
    labels = x.clone()
    labels[:, :8] = -100  # the prompt: no loss

    def loss_and_grads():
        model.zero_grad()
        out = model(input_ids=x, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.detach(), out.entropy.detach(), [p.grad.clone() for p in model.parameters()]

    full = loss_and_grads()
    with compact_lm_head_on_cpu():
        from trl.trainer import utils as trl_utils

        assert trl_utils._use_triton(torch.device("cpu"))  # the hook is in place while a trainer runs
        compact = loss_and_grads()
    assert not trl_utils._use_triton(torch.device("cpu"))  # and removed afterwards
    assert torch.allclose(full[0], compact[0], atol=1e-6)
    mask = labels[:, 1:] != -100
    assert torch.allclose(full[1][mask], compact[1][mask], atol=1e-5)
    for a, b in zip(full[2], compact[2]):
        assert torch.allclose(a, b, atol=1e-5)


def test_candidate_order_code_lists_candidates_like_the_answer():
    from icdcoder.coders.generative.prompts import PromptConfig, build_messages

    def offsets(text):
        return [(i, i + 1) for i in range(len(text))]

    cands = [("I10", "Essential hypertension"), ("E11.9", "Type 2 diabetes"), ("A41.9", None)]
    ranked = build_messages("a note", PromptConfig(max_note_tokens=50), offsets, candidates=cands)
    by_code = build_messages("a note", PromptConfig(max_note_tokens=50, candidate_order="code"), offsets,
                             candidates=cands)
    assert _listed(ranked) == ["I10", "E11.9", "A41.9"]
    assert _listed(by_code) == ["A41.9", "E11.9", "I10"]
    assert "E11.9 Type 2 diabetes" in by_code[-1]["content"]
    scored = [("I10", "Essential hypertension", 0.934), ("A41.9", None, 0.05)]
    shown = build_messages("a note", PromptConfig(max_note_tokens=50, candidate_scores=True), offsets,
                           candidates=scored)[-1]["content"]
    assert "I10 [0.93] Essential hypertension\nA41.9 [0.05]\n" in shown and "retriever score" in shown
    hidden = build_messages("a note", PromptConfig(max_note_tokens=50), offsets, candidates=scored)[-1]["content"]
    assert "I10 Essential hypertension\nA41.9\n" in hidden and "[0." not in hidden
    with pytest.raises(Exception, match="candidate_order must be rank or code"):
        coder_class("llm_prompt")(prompt={"candidate_order": "alphabet"})
