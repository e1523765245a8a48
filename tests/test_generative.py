"""Generative coders end to end on a tiny LM: prompting, SFT, GRPO, PHI, save/load, resume, study."""

import json
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from icdcoder.coders import Coder, coder_class  # noqa: E402
from icdcoder.coders.generative.answer import parse_answer  # noqa: E402
from icdcoder.coders.generative.backends import HFBackend, Sampling  # noqa: E402
from icdcoder.data.synth import SynthConfig, generate_synthetic  # noqa: E402
from tests.test_remote_backends import fake_vllm  # noqa: E402,F401  (fixture)

TINY = {"vocab_size": 600, "hidden_size": 32, "intermediate_size": 64, "layers": 1, "heads": 2, "kv_heads": 1,
        "max_positions": 512, "pretrain_steps": 5, "pretrain_block": 64}
PROMPT = {"max_note_tokens": 160}
GEN = {"max_new_tokens": 24, "batch_size": 8}
SFT = {"max_steps": 4, "batch_size": 4, "lr": 3e-3, "save_steps": 2, "logging_steps": 1}
GRPO = {"max_steps": 2, "batch_size": 4, "num_generations": 2, "max_completion_length": 16, "logging_steps": 1,
        "save_steps": 100, "rewards": {"f1": 1.0, "format": 0.1, "invalid": 0.5, "rules": 0.2}}


@pytest.fixture(scope="module")
def corpus():
    torch.set_num_threads(2)
    ds = {"train": [], "val": [], "test": []}
    for split, note in generate_synthetic(SynthConfig(n_train=40, n_val=6, n_test=6, seed=5)):
        ds[split].append(note)
    return ds["train"], ds["test"]


@pytest.fixture(scope="module")
def sft_dir(corpus, tmp_path_factory):
    train, _ = corpus
    root = tmp_path_factory.mktemp("sft")
    coder = coder_class("llm_sft")(tiny=TINY, prompt=PROMPT, generation=GEN, sft=SFT, checkpoint_dir=str(root / "ck"))
    coder.fit(train)
    coder.save(root / "model")
    return root


def test_prompt_coder_predicts_unscored_sets_and_counts_parse_problems(corpus, tmp_path):
    train, test = corpus
    coder = coder_class("llm_prompt")(tiny=TINY, prompt={**PROMPT, "few_shot": 1, "candidates": 3}, generation=GEN)
    coder.fit(train)
    preds = coder.predict(test)
    assert [p.id for p in preds] == [n.id for n in test]
    assert all(not p.scored and all(c.score == 1.0 for c in p.codes) for p in preds)
    stats = coder.last_predict_stats
    assert stats["answers"] == len(test) and 0 <= stats["malformed"] <= len(test)
    # the few-shot example and candidate list really are in the prompt
    msgs = coder.messages(test[0])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"].startswith("<code>") and "Candidate codes:" in msgs[3]["content"]
    coder.save(tmp_path / "m")
    again = Coder.load(tmp_path / "m")
    assert [p.model_dump() for p in again.predict(test)] == [p.model_dump() for p in preds]


def test_sft_trains_on_answers_saves_and_reloads(corpus, sft_dir):
    _, test = corpus
    coder = Coder.load(sft_dir / "model")
    assert coder.name == "llm_sft"
    sft = [h for h in coder.history if h["stage"] == "sft"][0]
    assert sft["global_step"] == 4 and sft["examples"] == 40
    losses = [h["loss"] for h in sft["log"] if "loss" in h]
    assert len(losses) == 4 and all(x == x and x > 0 for x in losses)  # finite, logged every step
    a = coder.predict(test)
    b = Coder.load(sft_dir / "model").predict(test)
    assert [p.model_dump() for p in a] == [p.model_dump() for p in b]  # greedy + same weights


def test_sft_resumes_from_its_newest_checkpoint(corpus, tmp_path):
    train, _ = corpus
    ck = tmp_path / "ck"
    first = coder_class("llm_sft")(tiny=TINY, prompt=PROMPT, generation=GEN,
                                   sft={**SFT, "max_steps": 2, "keep_checkpoints": True}, checkpoint_dir=str(ck))
    first.fit(train)
    assert (ck / "sft" / "checkpoint-2").is_dir()
    shutil.rmtree(ck / "sft" / "final")  # as if the run died after its last checkpoint
    again = coder_class("llm_sft")(tiny=TINY, prompt=PROMPT, generation=GEN, sft=SFT, checkpoint_dir=str(ck))
    again.fit(train)
    sft = [h for h in again.history if h["stage"] == "sft"][0]
    assert sft["resumed_from"].endswith("checkpoint-2") and sft["global_step"] == 4
    # finished, it deletes its checkpoints (weights and optimizer state): only the final model is kept
    assert not list((ck / "sft").glob("checkpoint-*")) and (ck / "sft" / "final" / "stage.json").exists()
    # a finished stage is reused, not trained again
    third = coder_class("llm_sft")(tiny=TINY, prompt=PROMPT, generation=GEN, sft=SFT, checkpoint_dir=str(ck))
    third.fit(train)
    assert [h["stage"] for h in third.history] == ["tiny_lm", "sft"]
    assert third.history[-1]["reused"] and third.history[-1]["global_step"] == 4


def test_grpo_from_sft_logs_rewards(corpus, sft_dir, tmp_path):
    train, test = corpus
    coder = coder_class("llm_grpo")(init_from=str(sft_dir / "model"), prompt=PROMPT, generation=GEN, grpo=GRPO,
                                    checkpoint_dir=str(tmp_path / "ck"))
    coder.fit(train)
    stages = [h["stage"] for h in coder.history]
    assert stages[-2:] == ["sft", "grpo"]  # SFT inherited from init_from, GRPO added
    grpo = coder.history[-1]
    assert grpo["global_step"] == 2
    rewards = [h for h in grpo["log"] if "rewards/f1_reward/mean" in h]
    assert rewards and all(0.0 <= h["rewards/f1_reward/mean"] <= 1.0 for h in rewards)
    assert all(-1.0 <= h["rewards/rule_penalty/mean"] <= 0.0 for h in rewards)  # the rule engine as a term
    assert not list((tmp_path / "ck").rglob("checkpoint-*"))  # pruned once the stage finished
    assert len(coder.predict(test)) == len(test)


def test_phi_round_trains_on_notes_that_miss_codes(corpus, sft_dir, tmp_path):
    train, _ = corpus
    coder = coder_class("llm_phi")(init_from=str(sft_dir / "model"), prompt=PROMPT, generation=GEN,
                                   grpo=GRPO, phi={"rounds": 1, "max_notes_per_round": 4, "hint_prob": 1.0},
                                   checkpoint_dir=str(tmp_path / "ck"))
    coder.fit(train)
    phi = coder.history[-1]
    assert phi["stage"] == "phi"
    r = phi["rounds"][0]
    # an SFT model this small misses codes on (nearly) every note; the pool is capped and all hinted
    assert r["notes_missing"] > 0 and r["pool"] == min(4, r["notes_missing"]) and r["hinted"] == r["pool"]
    assert r["global_step"] == r["pool"] * GRPO["num_generations"] // GRPO["batch_size"]


def test_hint_appears_in_training_prompt_only(corpus, sft_dir):
    _, test = corpus
    coder = Coder.load(sft_dir / "model")
    note = test[0]
    hinted = coder.messages(note, hint=[note.codes[0]])[-1]["content"]
    assert "Training hint" in hinted and note.codes[0] in hinted
    assert "Training hint" not in coder.messages(note)[-1]["content"]


def test_batched_generation_matches_unbatched(corpus, sft_dir):
    _, test = corpus
    model, tok = Coder.load(sft_dir / "model").lm()
    prompts = [[{"role": "user", "content": n.text[:300]}] for n in test]
    s = Sampling(max_new_tokens=12)
    batched = HFBackend(model, tok, batch_size=8, progress=False).generate(prompts, s)
    single = HFBackend(model, tok, batch_size=1, progress=False).generate(prompts, s)
    assert batched == single


def test_constrained_generation_only_writes_label_space_codes(corpus, sft_dir, tmp_path):
    _, test = corpus
    coder = Coder.load(sft_dir / "model")
    coder.gen["constrained"] = True
    coder.gen["max_new_tokens"] = 40
    coder._backend = None
    sets, stats = coder.generate_sets(test)
    assert stats["invalid_codes"] == 0
    for per_note in sets:
        assert set(per_note[0]) <= set(coder.label_space)


def test_study_runs_baseline_and_generative_coders_into_one_report(tmp_path):
    from icdcoder.study import StudyConfig, run_study

    cfg = StudyConfig.model_validate({
        "name": "mini", "seed": 3, "output": str(tmp_path / "study"),
        "data": {"synth": {"n_train": 40, "n_val": 8, "n_test": 8, "seed": 3}},
        "tiny": TINY, "bootstrap_resamples": 50,
        "runs": [
            {"name": "tfidf", "coder": "tfidf", "params": {"C": 1.0}},
            {"name": "prompt", "coder": "llm_prompt", "params": {"prompt": PROMPT, "generation": GEN}},
            {"name": "sft", "coder": "llm_sft", "params": {"prompt": PROMPT, "generation": GEN, "sft": SFT}},
            {"name": "grpo", "coder": "llm_grpo",
             "params": {"init_from": "sft", "prompt": PROMPT, "generation": GEN, "grpo": GRPO}},
        ]})
    result = run_study(cfg, log=lambda m: None)
    assert list(result["runs"]) == ["tfidf", "prompt", "sft", "grpo"]
    gold_total = result["runs"]["tfidf"]["gold_missed"]
    assert all(r["gold_missed"] >= 0 for r in result["runs"].values()) and gold_total >= 0
    assert result["runs"]["sft"]["malformed_answers"] is not None
    report = (tmp_path / "study" / "report" / "report.md").read_text()
    assert "# Study: mini" in report and "## Cost and errors" in report and "| prompt | sft |" in report
    study = json.loads((tmp_path / "study" / "report" / "study.json").read_text())
    assert [s["b"] for s in study["significance"]] == ["prompt", "sft", "grpo"]
    # the grpo run started from the sft run's model, not from scratch
    run = json.loads((tmp_path / "study" / "grpo" / "run.json").read_text())
    assert [h["stage"] for h in run["training"]][-2:] == ["sft", "grpo"]


def test_parser_feeds_rewards_and_validity(corpus, sft_dir):
    coder = Coder.load(sft_dir / "model")
    code = next(iter(coder.label_space))
    p = parse_answer(f"<code>{code}, Q99.99</code>", valid=coder.validity())
    assert p.codes == [code] and p.invalid == ["Q99.99"]


def test_tiny_lm_codes_are_single_tokens_and_extra_text_is_pretrained_on(corpus, tmp_path):
    from icdcoder.coders.generative.backends import load_causal_lm, load_tokenizer
    from icdcoder.coders.generative.tiny import TinyConfig, build_tiny_lm

    train, _ = corpus
    extra = tmp_path / "background"
    extra.mkdir()
    for i in range(3):
        (extra / f"{i}.txt").write_text("The patient was admitted with chest pain and discharged home. " * 20)
    out = build_tiny_lm(train, tmp_path / "lm", TinyConfig(**{**TINY, "pretrain_files": [str(extra)]}),
                        log=lambda m: None)
    meta = json.loads((out / "tiny_lm.json").read_text())
    assert meta["pretrain"]["steps"] == TINY["pretrain_steps"] and meta["pretrain"]["final_loss"] > 0
    tok, model = load_tokenizer(out), load_causal_lm(out)
    for code in {c for n in train for c in n.codes}:
        assert tok.tokenize(code) == [code]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert model.config.vocab_size == len(tok)


def test_prompting_a_named_openai_compatible_endpoint(corpus):
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "<code>I10, i509</code>"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        train, test = corpus
        coder = coder_class("llm_prompt")(model="hosted-model", prompt=PROMPT, generation={
            "backend": "openai", "base_url": f"http://127.0.0.1:{server.server_port}/v1", "max_new_tokens": 20})
        coder.fit(train)  # nothing to build: the model lives behind the endpoint
        preds = coder.predict(test[:2])
    finally:
        server.shutdown()
    assert [[c.code for c in p.codes] for p in preds] == [["I10", "I50.9"]] * 2
    assert seen[0]["model"] == "hosted-model" and seen[0]["messages"][-1]["content"].startswith("Note:")
    with pytest.raises(Exception, match="base_url"):
        coder_class("llm_prompt")(model="m", generation={"backend": "openai"}).backend()


@pytest.mark.parametrize("merge", [True, False])
def test_lora_sft_saves_merged_weights_or_an_adapter_that_loads_back(corpus, tmp_path, merge):
    pytest.importorskip("peft")
    train, test = corpus
    coder = coder_class("llm_sft")(tiny=TINY, prompt=PROMPT, generation=GEN, checkpoint_dir=str(tmp_path / "ck"),
                                   sft={**SFT, "max_steps": 2, "lora": {"r": 4, "alpha": 8, "merge": merge}})
    coder.fit(train)
    coder.save(tmp_path / "m")
    assert (tmp_path / "m" / "lm" / "adapter_config.json").exists() is (not merge)
    a = [p.model_dump() for p in coder.predict(test)]
    again = Coder.load(tmp_path / "m")
    assert [p.model_dump() for p in again.predict(test)] == a


def test_vllm_backend_serves_an_unmerged_adapter_through_its_base(tmp_path, fake_vllm):
    coder = coder_class("llm_prompt")(model="unused", generation={"backend": "vllm"})
    adapter = tmp_path / "lm"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base", "r": 8}))
    coder.lm_path = str(adapter)
    coder.backend()
    engine = fake_vllm.calls["engine"]
    assert engine["model"] == "org/base" and engine["enable_lora"] is True


class _FixedAnswers:
    """A back-end stand-in that answers every prompt with the same text."""

    def __init__(self, text):
        self.text, self.prompts = text, []

    def generate(self, prompts, sampling):
        self.prompts.extend(prompts)
        return [[self.text] * sampling.n for _ in prompts]

    def token_offsets(self, text):
        return [(i, min(i + 4, len(text))) for i in range(0, len(text), 4)]


def test_evidence_mode_quotes_gold_spans_and_grounds_answers_in_the_note(corpus):
    from icdcoder.data.note import Note

    train, _ = corpus
    coder = coder_class("llm_prompt")(tiny=TINY, prompt=PROMPT, generation=GEN, valid_codes="any", evidence={})
    # SFT targets quote each code's first gold span
    n = next(x for x in train if x.spans)
    target = coder.answer(n)[0]["content"]
    sp = n.spans[0]
    assert f'{sp.code} | "' in target and " ".join(n.text[sp.start:sp.end].split())[:40] in target
    note = Note(id="q", text="HPI: long-standing essential hypertension.\nPMH: Type 2 diabetes, on metformin.",
                codes=[])
    coder._backend = _FixedAnswers('<code>I10 | "essential hypertension"; E11.9 | "type 2 diabetis"; '
                                   'J18.9 | "lobar pneumonia"; I50.9</code>')
    coder.label_space = {"I10": 1}
    pred = coder.predict([note])[0]
    assert "quote" in coder.messages(note)[0]["content"]  # the instruction asks for quotes
    by = {c.code: c for c in pred.codes}
    assert [(e.start, e.end) for e in by["I10"].evidence] == [(19, 41)] and by["I10"].flags == []
    assert note.text[by["E11.9"].evidence[0].start:by["E11.9"].evidence[0].end] == "Type 2 diabetes"
    assert by["E11.9"].flags == ["evidence_fuzzy"]
    assert by["J18.9"].evidence == [] and by["J18.9"].flags == ["evidence_not_found"]
    assert by["I50.9"].flags == ["evidence_missing"]
    stats = coder.last_predict_stats
    assert (stats["quotes_exact"], stats["quotes_fuzzy"], stats["quotes_absent"]) == (1, 1, 1)
    # drop_unsupported keeps only codes whose evidence was found
    strict = coder_class("llm_prompt")(tiny=TINY, prompt=PROMPT, generation=GEN, valid_codes="any",
                                       evidence={"drop_unsupported": True})
    strict._backend, strict.label_space = coder._backend, coder.label_space
    assert [c.code for c in strict.predict([note])[0].codes] == ["I10", "E11.9"]
    assert strict.last_predict_stats["codes_dropped_unsupported"] == 2
    with pytest.raises(Exception, match="unknown evidence options"):
        coder_class("llm_prompt")(evidence={"quote": True})


def test_evidence_reward_reads_the_note_column():
    from icdcoder.training.rewards import evidence_reward

    notes = ["Known essential hypertension.", "Known essential hypertension."]
    out = evidence_reward(None, ['<code>I10 | "essential hypertension"; E11.9 | "diabetes"</code>', "<code></code>"],
                          note_text=notes)
    assert out == [0.5, 0.0]
    with pytest.raises(TypeError, match="note_text"):
        evidence_reward(None, ["<code>I10</code>"])


def test_study_code_centric_row_is_compared_with_its_document_only_twin(tmp_path):
    from icdcoder.study import StudyConfig, run_study

    sft = {"epochs": 1, "batch_size": 8, "lr": 3e-3, "save_steps": 100, "logging_steps": 1}  # every example once
    params = {"prompt": PROMPT, "generation": {**GEN, "max_new_tokens": 32}, "sft": sft, "evidence": {}}
    cfg = StudyConfig.model_validate({
        "name": "cc", "seed": 3, "output": str(tmp_path / "study"),
        "data": {"synth": {"n_train": 40, "n_val": 8, "n_test": 8, "seed": 3}},
        "tiny": TINY, "bootstrap_resamples": 50,
        "runs": [
            {"name": "sft", "coder": "llm_sft", "params": params},
            {"name": "tfidf", "coder": "tfidf", "params": {"C": 1.0}},
            {"name": "sft_cc", "coder": "llm_sft", "params": params, "compare_to": "sft",
             "code_centric": {"span_ratio": 0.5}},
        ]})
    result = run_study(cfg, log=lambda m: None)
    assert result["runs"]["sft"]["train_examples"] == 40 and result["runs"]["sft_cc"]["train_examples"] == 80
    assert result["runs"]["sft_cc"]["training_tokens"] > result["runs"]["sft"]["training_tokens"] > 0
    study = json.loads((tmp_path / "study" / "report" / "study.json").read_text())
    assert [(s["a"], s["b"]) for s in study["significance"]] == [("sft", "tfidf"), ("sft", "sft_cc")]
    report = (tmp_path / "study" / "report" / "report.md").read_text()
    assert "## Evidence" in report and "| unseen_f1 |" in report and "| training_tokens |" in report
    with pytest.raises(ValueError, match="compare_to"):
        StudyConfig.model_validate({**cfg.model_dump(), "runs": [{"name": "a", "coder": "tfidf",
                                                                   "compare_to": "b"}]})


def test_lm_paraphrases_through_a_real_backend(sft_dir):
    from icdcoder.training.spans import SpanExample, backend_generator, lm_paraphrases

    backend = Coder.load(sft_dir / "model").backend()
    generate = backend_generator(backend, n=2, max_new_tokens=8, seed=1)
    lines = generate(["essential hypertension", "type 2 diabetes mellitus"])
    assert len(lines) == 2 and all(isinstance(x, list) and all(isinstance(s, str) for s in x) for x in lines)
    ex = [SpanExample(text="essential hypertension", code="I10", system="icd10cm", source="description")]
    out = lm_paraphrases(generate, ex * 2, per_example=1)
    assert len(out) <= 2 and all(e.source == "lm" and e.code == "I10" and e.text for e in out)
