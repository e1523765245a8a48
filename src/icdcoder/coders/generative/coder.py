"""The prompting coder (``llm_prompt``) and the machinery every generative coder shares.

A generative coder is an LM plus a prompt recipe. It writes ``<code>...</code>``; the one parser turns
that into a code set, dropping codes that fail the validity check (counted in ``last_predict_stats``).
Greedy decoding gives unscored code sets (scores 1.0, ``scored: false``); with ``num_samples > 1``
the score of a code is the share of sampled answers that contain it, so ranking metrics apply.

The trained stages (SFT, GRPO, PHI) subclass this in :mod:`icdcoder.training.stages`: they differ only
in ``fit``. Parameters (all saved in ``coder.json``)::

    model: tiny                  # or any HF causal LM id / local path
    init_from: runs/x/model      # start from another generative coder's LM (a later stage)
    tiny: {...}                  # TinyConfig, when model is tiny
    prompt: {...}                # PromptConfig: budgets, few_shot, candidates
    generation: {max_new_tokens: 96, batch_size: 16, backend: hf|vllm|openai, base_url, api_model,
                 constrained: false,  # true: label-space codes only; candidates: the prompt's candidates only
                 num_samples: 1, temperature: 0.0}
    valid_codes: ontology        # which parsed codes are kept: ontology | label_space | any
    evidence: {drop_unsupported: false, min_score: 85}   # evidence-grounded answers (see below)

With ``evidence`` set the coder answers ``<code>I10 | "history of hypertension"; ...</code>``: trained
targets quote the note's gold span of each code, and at prediction each quote is located in the note
(exact, then fuzzy at ``min_score``) and becomes the code's ``Prediction`` evidence. A code whose quote
is not in the note is flagged ``evidence_not_found`` (one with no quote ``evidence_missing``), and with
``drop_unsupported`` it is dropped.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from icdcoder.coders.base import HF_FOLDER_FILES, Coder, register
from icdcoder.coders.generative.answer import ParsedAnswer, format_answer, parse_answer
from icdcoder.coders.generative.backends import Messages, Sampling
from icdcoder.coders.generative.prompts import PromptConfig, Retriever, build_messages, code_system
from icdcoder.data.note import Note
from icdcoder.errors import IcdcoderError
from icdcoder.io import iter_jsonl, write_json
from icdcoder.prediction import Evidence, Prediction, ScoredCode

GEN_DEFAULTS: dict[str, Any] = {"max_new_tokens": 96, "batch_size": 16, "backend": "hf", "base_url": None,
                                "api_model": None, "constrained": False, "num_samples": 1, "temperature": 0.0,
                                "dtype": None}
EVIDENCE_DEFAULTS: dict[str, Any] = {"drop_unsupported": False, "min_score": 85.0}


def _scored(item) -> tuple[str, float | None]:
    """A stored candidate: ``[code, score]``, or a bare code from folders written before scores were kept."""
    if isinstance(item, str):
        return item, None
    code, score = item
    return str(code), (None if score is None else float(score))


@register("llm_prompt")
class GenerativeCoder(Coder):
    """Zero- or few-shot prompting of a causal LM (``fit`` builds the tiny LM or just the example pool)."""

    scored = False
    # an LM built or trained here is saved in lm/ as transformers writes it (safetensors, tokenizer, chat
    # template, PEFT adapter), with the tiny LM's and a training stage's own records
    state_files = ("generative.json", "pool.jsonl",
                   *(f"lm/{name}" for name in (*HF_FOLDER_FILES, "tiny_lm.json", "stage.json")))
    stage_options: tuple[str, ...] = ()  # extra parameter groups a training stage accepts (sft, grpo, phi)
    trains_lm = False  # prompts of training notes become training data (SFT, GRPO, PHI)

    def __init__(self, model: str = "tiny", init_from: str | None = None, tiny: dict | None = None,
                 prompt: dict | None = None, generation: dict | None = None, valid_codes: str = "ontology",
                 evidence: dict | None = None, seed: int = 13, checkpoint_dir: str | None = None, **stage: Any):
        super().__init__(model=model, init_from=init_from, tiny=tiny or {}, prompt=prompt or {},
                         generation=generation or {}, valid_codes=valid_codes, evidence=evidence, seed=seed,
                         **stage)
        unknown = set(stage) - set(self.stage_options)
        if unknown:
            raise IcdcoderError(f"{self.name}: unknown parameters {sorted(unknown)}")
        if valid_codes not in ("ontology", "label_space", "any"):
            raise IcdcoderError(f"valid_codes must be ontology, label_space or any, not {valid_codes!r}")
        self.prompt_cfg = PromptConfig(**(prompt or {}))
        unknown = set(evidence or {}) - set(EVIDENCE_DEFAULTS)
        if unknown:
            raise IcdcoderError(f"unknown evidence options {sorted(unknown)}; known: {sorted(EVIDENCE_DEFAULTS)}")
        self.evidence = None if evidence is None else {**EVIDENCE_DEFAULTS, **evidence}
        if self.evidence is not None:
            self.prompt_cfg.evidence = True
        unknown = set(generation or {}) - set(GEN_DEFAULTS)
        if unknown:
            raise IcdcoderError(f"unknown generation options {sorted(unknown)}; known: {sorted(GEN_DEFAULTS)}")
        self.gen = {**GEN_DEFAULTS, **(generation or {})}
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.lm_path: str | None = None      # folder or id the LM loads from
        self.owns_lm = False                 # weights built or trained by icdcoder travel with the coder
        self.label_space: dict[str, int] = {}  # training code -> frequency
        self.history: list[dict[str, Any]] = []  # what each training stage did
        self.last_predict_stats: dict[str, Any] = {}
        self._pool: Retriever | None = None
        self._backend = None
        self._lm = None  # (model, tokenizer) in memory after training
        self._candidate_coder: Coder | None = None  # prompt.candidates_from, loaded on first use
        # training note id -> cross-fitted ranking (this fit): [code, score] pairs, best first
        self._oof_candidates: dict[str, list[list]] = {}
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ fitting
    def fit(self, train: Sequence[Note], val: Sequence[Note] | None = None) -> "GenerativeCoder":
        self._prepare(train)
        return self

    def _prepare(self, train: Sequence[Note]) -> None:
        """Label space, example pool, and the starting LM (built, inherited or named)."""
        self._remember_labels(train)
        self.label_space = dict(Counter(c for n in train for c in n.codes))
        if self.prompt_cfg.few_shot or self.prompt_cfg.candidates:
            self._pool = Retriever([n.text for n in train], [n.codes for n in train])
        init = self.params.get("init_from")
        if init:
            parent = Coder.load(init)
            if not isinstance(parent, GenerativeCoder):
                raise IcdcoderError(f"init_from {init} is a {parent.name} coder, not a generative one")
            self.lm_path, self.owns_lm = parent.lm_path, parent.owns_lm
            self.history = [{**h, "inherited": True} for h in parent.history]
            if (parent.prompt_cfg.candidates_from == self.prompt_cfg.candidates_from
                    and parent.prompt_cfg.candidates >= self.prompt_cfg.candidates):
                self._oof_candidates = dict(parent._oof_candidates)  # the same cross-fit: reused, not refitted
        elif self.params["model"] == "tiny":
            from icdcoder.coders.generative.tiny import TinyConfig, build_tiny_lm

            start = time.perf_counter()
            cfg = TinyConfig(**{"seed": self.seed, **self.params["tiny"]})
            self.lm_path = str(build_tiny_lm(train, self._work_dir() / "tiny-lm", cfg, self.prompt_cfg.system,
                                             log=self._log))
            meta = json.loads((Path(self.lm_path) / "tiny_lm.json").read_text(encoding="utf-8"))
            self.history.append({"stage": "tiny_lm", "seconds": round(time.perf_counter() - start, 2), **meta})
            self.owns_lm = True
        else:
            self.lm_path = str(self.params["model"])
            if self.gen["backend"] != "openai":
                from icdcoder.lm_models import is_registered, resolve_model

                if is_registered(self.lm_path):  # prepared (or checked) now, so a missing package fails at fit;
                    resolve_model(self.lm_path)  # lm_path keeps the name: loaders re-resolve it wherever the cache is
            # a tiny LM built by icdcoder (a few MB) travels with the coder; a named model stays a reference
            self.owns_lm = (Path(self.lm_path) / "tiny_lm.json").exists()
        if self.trains_lm and self.prompt_cfg.candidates and self.prompt_cfg.candidates_from:
            self._cross_fit_candidates(train)

    CANDIDATE_FOLDS = 5

    def _cross_fit_candidates(self, train: Sequence[Note]) -> None:
        """Out-of-fold candidate rankings for the training notes, when the ``candidates_from`` coder kept
        none (a reranker keeps its own): copies of that coder with its parameters, each fitted on 4 of 5
        folds of the training documents, rank the held-out fold. Span examples (code-centric mixing) are
        not documents the coder saw; they get its ordinary ranking."""
        from icdcoder.data.note import is_span_note
        from icdcoder.data.splits import kfold_of

        ranker = self._candidates_coder()
        docs = [n for n in train if not is_span_note(n)]
        oof = getattr(ranker, "out_of_fold", None) or {}
        if all(n.id in oof or n.id in self._oof_candidates for n in docs) or len(docs) < self.CANDIDATE_FOLDS:
            return
        self._oof_candidates = {}
        start = time.perf_counter()
        fold_of = kfold_of(len(docs), self.CANDIDATE_FOLDS, self.seed)
        for k in range(self.CANDIDATE_FOLDS):
            inside = [n for n, f in zip(docs, fold_of) if f != k]
            held = [n for n, f in zip(docs, fold_of) if f == k]
            model = type(ranker)(**ranker.params).fit(inside, None)
            for n, pred in zip(held, model.predict(held)):
                self._oof_candidates[n.id] = [[c.code, round(float(c.score), 4)]
                                              for c in pred.codes[: self.prompt_cfg.candidates]]
        self._log(f"candidates: out-of-fold rankings of {len(docs):,} training notes by {ranker.name} "
                  f"({self.CANDIDATE_FOLDS} folds, {time.perf_counter() - start:.0f} s)")

    def _candidates_coder(self) -> Coder:
        if self._candidate_coder is None:
            self._candidate_coder = Coder.load(self.prompt_cfg.candidates_from)
        return self._candidate_coder

    def _work_dir(self) -> Path:
        if self.checkpoint_dir:
            d = Path(self.checkpoint_dir)
            d.mkdir(parents=True, exist_ok=True)
            return d
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="icdcoder-lm-")
        return Path(self._tmp.name)

    def _log(self, msg: str) -> None:
        from rich.console import Console

        from icdcoder.distributed import is_main_process

        if not is_main_process():
            return
        Console(stderr=True).print(f"[cyan]{self.name}[/]: {msg}")

    # ------------------------------------------------------------------ the LM
    def lm(self):
        """The (model, tokenizer) pair, loaded on first use from ``lm_path``."""
        if self._lm is None:
            from icdcoder.coders.generative.backends import load_causal_lm, load_tokenizer

            if self.lm_path is None:
                raise IcdcoderError("the coder has no LM yet: fit or load it first")
            self._lm = (load_causal_lm(self.lm_path, dtype=self.gen["dtype"]), load_tokenizer(self.lm_path))
        return self._lm

    def backend(self):
        if self._backend is None:
            kind = self.gen["backend"]
            if kind == "hf":
                from icdcoder.coders.generative.backends import HFBackend

                model, tok = self.lm()
                factory = None
                if self.gen["constrained"]:
                    from transformers import LogitsProcessorList

                    from icdcoder.coders.generative.constrained import CodeGrammar, constrained_processor

                    # vocabulary tables are built once; each batch only sets its prompt width (and, for
                    # "candidates", each row's grammar over its note's candidate codes)
                    proc = constrained_processor(tok, sorted(self.label_space), 0)[0]
                    if self._constrain_to_candidates():
                        grammars: dict[tuple[str, ...], CodeGrammar] = {}

                        def factory(width, rows):
                            per_row = [grammars.setdefault(tuple(r), CodeGrammar(r)) for r in rows]
                            return LogitsProcessorList([proc.for_rows(width, per_row)])
                    else:
                        factory = lambda width, rows=None: LogitsProcessorList(  # noqa: E731
                            [proc.with_prompt_length(width)])
                self._backend = HFBackend(model, tok, batch_size=self.gen["batch_size"], logits_processor=factory)
            elif kind == "vllm":
                from icdcoder.coders.generative.vllm_backend import VLLMBackend

                adapter = Path(self.lm_path) / "adapter_config.json"
                if adapter.exists():  # an unmerged LoRA adapter: vLLM serves its base through it
                    base = json.loads(adapter.read_text(encoding="utf-8"))["base_model_name_or_path"]
                    self._backend = VLLMBackend(base, lora_path=self.lm_path, seed=self.seed)
                else:
                    self._backend = VLLMBackend(self.lm_path, seed=self.seed)
            elif kind == "openai":
                from icdcoder.coders.generative.remote import OpenAIBackend

                if not self.gen["base_url"]:
                    raise IcdcoderError("backend openai needs generation.base_url: notes go only to an endpoint "
                                        "you name")
                self._backend = OpenAIBackend(base_url=self.gen["base_url"],
                                              model=self.gen["api_model"] or self.params["model"])
            else:
                raise IcdcoderError(f"unknown backend {kind!r}; use hf, vllm or openai")
        return self._backend

    # ------------------------------------------------------------------ prompts and answers
    def _constrain_to_candidates(self) -> bool:
        mode = self.gen["constrained"]
        if mode not in (False, True, "candidates"):
            raise IcdcoderError(f"generation.constrained must be false, true (the label space) or candidates, "
                                f"not {mode!r}")
        if mode == "candidates" and not self.prompt_cfg.candidates:
            raise IcdcoderError("generation.constrained: candidates needs prompt.candidates > 0")
        return mode == "candidates"

    def prompt_candidates(self, note: Note, exclude_self: bool = False) -> list[tuple]:
        """The candidate codes the prompt of ``note`` lists: (code, description[, score]) tuples."""
        from icdcoder.ontology import get_ontology

        cfg = self.prompt_cfg
        if not cfg.candidates:
            return []
        onto = get_ontology()
        if cfg.candidates_from:
            return [(c, onto.describe(c, code_system(cfg.system)), score) for c, score in
                    self._ranked_candidates(note, exclude_self)]
        if self._pool is not None:
            return [(c, onto.describe(c, code_system(cfg.system))) for c in
                    self._pool.candidates(note.text, cfg.candidates, exclude=note.text if exclude_self else None)]
        return []

    def messages(self, note: Note, hint: Sequence[str] = (), exclude_self: bool = False,
                 candidates: Sequence[tuple] | None = None) -> Messages:
        """The prompt for ``note``; ``hint`` codes (PHI training only) are named with descriptions;
        ``candidates`` (from :meth:`prompt_candidates`) saves ranking the note again."""
        from icdcoder.ontology import get_ontology

        cfg, examples = self.prompt_cfg, []
        exclude = note.text if exclude_self else None
        if self._pool is not None and cfg.few_shot:
            examples = [(self._pool.texts[i], self._pool.codes[i]) for i in
                        self._pool.nearest(note.text, cfg.few_shot, exclude)]
        if candidates is None:
            candidates = self.prompt_candidates(note, exclude_self)
        onto = get_ontology() if hint else None
        hints = [(c, onto.describe(c, code_system(cfg.system))) for c in hint] if hint else []
        return build_messages(note.text, cfg, self.backend().token_offsets, examples=examples,
                              candidates=candidates, hint=hints)

    def _ranked_candidates(self, note: Note, training: bool) -> list[tuple[str, float | None]]:
        """The first ``candidates`` (code, score) pairs of the ``candidates_from`` coder's ranking. For a training
        note an out-of-fold ranking is used: the coder's own when it kept one (a reranker does), else
        the one cross-fitted at ``fit``. A ranking by a model fitted on the note would list its gold
        codes first, and the LM would learn to copy a list that is never that good on new notes."""
        cfg = self.prompt_cfg
        ranker = self._candidates_coder()
        if training:
            if note.id in self._oof_candidates:
                return [_scored(c) for c in self._oof_candidates[note.id][: cfg.candidates]]
            oof = getattr(ranker, "out_of_fold", {}) or {}
            if note.id in oof:
                return [(c, float(s)) for c, s in oof[note.id]][: cfg.candidates]
        pred = ranker.predict([note])[0]
        return [(c.code, float(c.score)) for c in pred.codes[: cfg.candidates]]

    def answer(self, note: Note) -> Messages:
        """The target completion for SFT: the gold code set in the answer format (with evidence mode,
        each code quotes its first gold span)."""
        quotes = None
        if self.evidence is not None:
            quotes = {}
            for sp in note.spans:
                quotes.setdefault(sp.code, note.text[sp.start:sp.end])
        return [{"role": "assistant",
                 "content": format_answer(note.codes, code_system(self.prompt_cfg.system), evidence=quotes)}]

    def validity(self):
        mode = self.params["valid_codes"]
        if mode == "label_space":
            return set(self.label_space)
        if mode == "any":
            return lambda c: True
        return None  # the parser checks the ontology

    def generate_answers(self, notes: Sequence[Note], *, sampling: Sampling | None = None,
                         exclude_self: bool = False) -> tuple[list[list[ParsedAnswer]], dict[str, Any]]:
        """Each sampled answer per note, parsed, plus parse statistics."""
        sampling = sampling or self.sampling()
        if self._constrain_to_candidates():  # each answer may use only the codes its prompt lists
            cands = [self.prompt_candidates(n, exclude_self) for n in notes]
            prompts = [self.messages(n, exclude_self=exclude_self, candidates=c) for n, c in zip(notes, cands)]
            texts = self.backend().generate(prompts, sampling, allowed=[[c[0] for c in cs] for cs in cands])
        else:
            prompts = [self.messages(n, exclude_self=exclude_self) for n in notes]
            texts = self.backend().generate(prompts, sampling)
        valid, stats = self.validity(), Counter()
        parsed = []
        for outs in texts:
            per_note = []
            for t in outs:
                p = parse_answer(t, system=code_system(self.prompt_cfg.system), valid=valid)
                stats["answers"] += 1
                stats["malformed"] += p.malformed
                stats["invalid_codes"] += len(p.invalid)
                stats["codes"] += len(p.codes)
                per_note.append(p)
            parsed.append(per_note)
        return parsed, dict(stats)

    def generate_sets(self, notes: Sequence[Note], *, sampling: Sampling | None = None,
                      exclude_self: bool = False) -> tuple[list[list[list[str]]], dict[str, Any]]:
        """Code sets of each sampled answer per note, plus parse statistics."""
        parsed, stats = self.generate_answers(notes, sampling=sampling, exclude_self=exclude_self)
        return [[p.codes for p in per_note] for per_note in parsed], stats

    def sampling(self) -> Sampling:
        n = int(self.gen["num_samples"])
        temp = float(self.gen["temperature"]) or (1.0 if n > 1 else 0.0)
        return Sampling(max_new_tokens=int(self.gen["max_new_tokens"]), temperature=temp, n=n, seed=self.seed)

    def predict(self, notes: Sequence[Note]) -> list[Prediction]:
        start = time.perf_counter()
        parsed, counts = self.generate_answers(notes)
        stats = Counter(counts)
        preds = []
        for note, per_note in zip(notes, parsed):
            if len(per_note) == 1:
                pred = Prediction.from_code_set(note.id, per_note[0].codes)
            else:  # self-consistency: the share of samples naming a code is its score
                votes = Counter(c for p in per_note for c in set(p.codes))
                pred = Prediction.from_scores(note.id, {c: v / len(per_note) for c, v in votes.items()})
            if self.evidence is not None:
                pred = self._ground(note, pred, per_note, stats)
            preds.append(pred)
        seconds = time.perf_counter() - start
        stats = {**stats, "notes": len(notes), "seconds": round(seconds, 3)}
        backend = self.backend()
        if hasattr(backend, "generated_tokens"):
            stats["generated_tokens"] = backend.generated_tokens
        self.last_predict_stats = stats
        return preds

    def _ground(self, note: Note, pred: Prediction, answers: Sequence[ParsedAnswer], stats: Counter) -> Prediction:
        """Locate each code's quotes in the note: evidence offsets, flags, and (optionally) drops."""
        from icdcoder.coders.generative.quotes import locate_all

        quotes = {sc.code: list(dict.fromkeys(q for a in answers for q in a.evidence.get(sc.code, [])))
                  for sc in pred.codes}
        flat = [q for qs in quotes.values() for q in qs]  # one pass over the note for all its quotes
        located = iter(locate_all(note.text, flat, min_score=float(self.evidence["min_score"])))
        kept = []
        for sc in pred.codes:
            found, flags = [], []
            for _ in quotes[sc.code]:
                m = next(located)
                stats[f"quotes_{m.kind if m else 'absent'}"] += 1
                if m is not None:
                    found.append((m, Evidence(start=m.start, end=m.end, text=note.text[m.start:m.end])))
            if not quotes[sc.code]:
                flags.append("evidence_missing")
            elif not found:
                flags.append("evidence_not_found")
            elif all(m.kind == "fuzzy" for m, _ in found):
                flags.append("evidence_fuzzy")
            if self.evidence["drop_unsupported"] and flags and flags[0] != "evidence_fuzzy":
                stats["codes_dropped_unsupported"] += 1
                continue
            ev = list({(e.start, e.end): e for _, e in found}.values())
            kept.append(ScoredCode(code=sc.code, score=sc.score, evidence=ev, flags=flags))
        return Prediction(id=pred.id, codes=kept, scored=pred.scored)

    # ------------------------------------------------------------------ persistence
    def _save_state(self, folder: Path) -> None:
        owned = self.owns_lm
        if owned:  # weights built or trained here travel with the coder
            model, tok = self.lm() if self._lm is not None else (None, None)
            if model is not None:
                from icdcoder.progress import hf_bars_off_terminal

                with hf_bars_off_terminal():
                    model.save_pretrained(folder / "lm")
                tok.save_pretrained(folder / "lm")
            else:
                shutil.copytree(self.lm_path, folder / "lm")
        state = {"lm": "lm" if owned else self.lm_path, "label_space": self.label_space, "history": self.history,
                 "oof_candidates": self._oof_candidates}
        write_json(folder / "generative.json", state)
        if self._pool is not None:
            with open(folder / "pool.jsonl", "w", encoding="utf-8") as fh:
                for t, c in zip(self._pool.texts, self._pool.codes):
                    fh.write(json.dumps({"text": t, "codes": c}, ensure_ascii=False) + "\n")

    def _load_state(self, folder: Path) -> None:
        state = json.loads((folder / "generative.json").read_text(encoding="utf-8"))
        self.lm_path = str(folder / state["lm"]) if state["lm"] == "lm" else state["lm"]
        self.label_space = {k: int(v) for k, v in state["label_space"].items()}
        self.history = state.get("history", [])
        self.owns_lm = state["lm"] == "lm"
        # older folders kept codes only: their scores are unknown (None)
        self._oof_candidates = {k: [list(_scored(c)) for c in v] for k, v in state.get("oof_candidates", {}).items()}
        if (folder / "pool.jsonl").exists():
            rows = list(iter_jsonl(folder / "pool.jsonl"))
            self._pool = Retriever([r["text"] for _, r in rows], [r["codes"] for _, r in rows])
