"""Mixed training: span -> code examples and whole documents in one training set, at a set ratio.

A span example becomes a short :class:`Note` (its text, its one code, a span covering it), so every
coder trains on the mix through its ordinary ``fit``: TF-IDF and PLM-ICD see extra short documents,
the generative coders extra (span, answer) pairs for SFT and extra prompts for GRPO. The mix is
interleaved evenly, so any stretch of the training order holds about ``span_ratio`` span examples (the
TRL trainers shuffle again; the ratio holds in expectation per batch).

Span examples are drawn round-robin over codes (each code's examples in a seeded shuffle), so a code
with 40 gold spans does not crowd out one with 4 ontology phrasings; rare and unseen target codes (the
``expand`` ones) come first with ``min_examples`` each, since they have no documents to learn from. An experiment config turns it on::

    code_centric:
      span_ratio: 0.3                  # share of span examples in the training set (0 = documents only)
      sources: [gold, ontology]        # gold spans of the training notes; ontology phrasings; lm paraphrases
      label_space: dataset             # target codes: dataset (every split's codes), train, or a file of codes
      expand: {min_examples: 4, max_train_count: 2}   # rare/unseen target codes get this many examples
      index_file: null                 # CMS ICD-10-CM index XML, for index terms
      spans_file: null                 # more span examples (JSONL, SpanExample)
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from icdcoder.codes import CodeSystem, infer_system, normalize_code
from icdcoder.data.note import Dataset, Note, Span
from icdcoder.errors import DataError
from icdcoder.training.spans import (SpanExample, coverage, expansion_spans, gold_spans, ontology_spans, read_spans)

SPAN_ID_PREFIX = "span:"


class ExpandConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_examples: int = Field(4, ge=1)
    max_train_count: int = Field(2, ge=0)


class LMParaphraseConfig(BaseModel):
    """Paraphrase ontology phrasings with a language model (any generative back-end)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    backend: Literal["hf", "vllm", "openai"] = "hf"
    base_url: str | None = None
    per_example: int = Field(2, ge=1)
    max_examples: int = Field(2000, ge=1)


class CodeCentricConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    span_ratio: float = Field(0.3, ge=0.0, lt=1.0)
    sources: list[Literal["gold", "ontology", "lm"]] = Field(default_factory=lambda: ["gold", "ontology"])
    label_space: str = "dataset"
    expand: ExpandConfig | None = Field(default_factory=ExpandConfig)
    max_per_code: int = Field(6, ge=1)
    context_chars: int = Field(0, ge=0)
    index_file: str | None = None
    spans_file: str | None = None
    lm: LMParaphraseConfig | None = None
    seed: int = 13


def span_note(example: SpanExample, k: int) -> Note:
    """A span example as a training note: one code, evidence covering the whole text."""
    return Note(id=f"{SPAN_ID_PREFIX}{k}", text=example.text, codes=[example.code],
                code_systems={example.code: example.system},
                spans=[Span(code=example.code, start=0, end=len(example.text))],
                metadata={"span_source": example.source})


def is_span_note(note: Note) -> bool:
    return note.id.startswith(SPAN_ID_PREFIX)


def draw_round_robin(spans: Sequence[SpanExample], n: int, seed: int = 13,
                     first: Mapping[str, int] | None = None) -> list[SpanExample]:
    """``n`` examples taking one per code in turn (codes and each code's examples in a seeded order);
    examples repeat only once every code's list is used up. ``first`` (code -> k) takes k examples of
    those codes before the round-robin starts (as far as ``n`` allows)."""
    if n <= 0 or not spans:
        return []
    rng = random.Random(seed)
    by_code: dict[str, list[SpanExample]] = defaultdict(list)
    for e in spans:
        by_code[e.code].append(e)
    codes = sorted(by_code)
    rng.shuffle(codes)
    for c in codes:
        rng.shuffle(by_code[c])
    out: list[SpanExample] = []
    taken: Counter = Counter()
    for c in codes:
        for _ in range(min((first or {}).get(c, 0), n - len(out))):
            out.append(by_code[c][taken[c] % len(by_code[c])])
            taken[c] += 1
    while len(out) < n:
        for c in codes:
            lst = by_code[c]
            out.append(lst[taken[c] % len(lst)])
            taken[c] += 1
            if len(out) == n:
                break
    return out


def mix(documents: Sequence[Note], spans: Sequence[SpanExample], span_ratio: float, *, seed: int = 13,
        first: Mapping[str, int] | None = None) -> list[Note]:
    """Documents plus span notes so that span notes are ``span_ratio`` of the result, interleaved evenly.

    ``n_spans = round(ratio / (1 - ratio) * n_documents)``: the documents are all kept, once each.
    ``first`` is :func:`draw_round_robin`'s: codes whose examples are drawn before the others."""
    if not 0.0 <= span_ratio < 1.0:
        raise ValueError(f"span_ratio must be in [0, 1), got {span_ratio}")
    n_spans = round(span_ratio / (1.0 - span_ratio) * len(documents)) if spans else 0
    drawn = [span_note(e, k) for k, e in enumerate(draw_round_robin(spans, n_spans, seed, first))]
    docs = list(documents)
    total = len(docs) + len(drawn)
    out, d, s = [], 0, 0
    for i in range(total):  # even interleaving: after i+1 items, about (i+1)*ratio are spans
        want_spans = round((i + 1) * len(drawn) / total) if total else 0
        if s < want_spans and s < len(drawn):
            out.append(drawn[s])
            s += 1
        else:
            out.append(docs[d])
            d += 1
    return out


def target_codes(cfg: CodeCentricConfig, ds: Dataset) -> dict[str, CodeSystem]:
    """The codes that should get supervision, with their systems."""
    systems: dict[str, CodeSystem] = {}
    for _, n in ds:
        systems.update(n.code_systems)
    if cfg.label_space == "dataset":
        return {c: systems[c] for c in sorted(systems)}
    if cfg.label_space == "train":
        return {c: systems[c] for c in sorted(ds.code_counts("train"))}
    path = Path(cfg.label_space)
    if not path.exists():
        raise DataError("code_centric.label_space is neither 'dataset', 'train' nor a file of codes", path=path)
    out: dict[str, CodeSystem] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        raw = line.split("#", 1)[0].strip()
        if not raw:
            continue
        try:
            code, _, sys_name = raw.partition("\t")
            system = CodeSystem(sys_name.strip()) if sys_name.strip() else infer_system(code)
            out[normalize_code(code.strip(), system)] = system
        except Exception as e:  # a bad code names its line
            raise DataError(f"not an ICD code ({e})", path=path, line=lineno, field="code") from None
    return out


def build_span_pool(cfg: CodeCentricConfig, ds: Dataset, *, log: Callable[[str], None] = print
                    ) -> tuple[list[SpanExample], dict[str, Any]]:
    """Every span example the config asks for, plus a summary (counts by source, coverage)."""
    train = ds["train"]
    counts = Counter(c for n in train for c in n.codes)
    target = target_codes(cfg, ds)
    pool: list[SpanExample] = []
    if "gold" in cfg.sources:
        pool += gold_spans(train, context_chars=cfg.context_chars)
        if not any(n.spans for n in train):
            log("code-centric: the training notes have no gold evidence spans")
    if cfg.spans_file:
        pool += read_spans(cfg.spans_file)
    onto: list[SpanExample] = []
    if "ontology" in cfg.sources or "lm" in cfg.sources:
        index = None
        if cfg.index_file:
            from icdcoder.ontology.index_terms import load_index_terms

            index = load_index_terms(cfg.index_file)
        onto = ontology_spans(target, index_terms=index, max_per_code=cfg.max_per_code)
        if "ontology" in cfg.sources:
            pool += onto
    if "lm" in cfg.sources:
        pool += _lm_examples(cfg, onto, log)
    if cfg.expand is not None:
        base = pool if "ontology" in cfg.sources else pool + onto
        pool += expansion_spans(target, counts, base, min_examples=cfg.expand.min_examples,
                                max_train_count=cfg.expand.max_train_count, seed=cfg.seed)
    return pool, coverage(target, counts, pool)


def _lm_examples(cfg: CodeCentricConfig, onto: Sequence[SpanExample], log: Callable[[str], None]) -> list[SpanExample]:
    from icdcoder.training.spans import backend_generator, lm_paraphrases

    if cfg.lm is None:
        raise DataError("code_centric.sources names lm but code_centric.lm (model, backend) is not set")
    plain = [e for e in onto if e.source in ("description", "inclusion", "index")][:cfg.lm.max_examples]
    if cfg.lm.backend == "openai":
        from icdcoder.coders.generative.remote import OpenAIBackend

        if not cfg.lm.base_url:
            raise DataError("code_centric.lm with backend openai needs base_url")
        backend = OpenAIBackend(base_url=cfg.lm.base_url, model=cfg.lm.model)
    elif cfg.lm.backend == "vllm":
        from icdcoder.coders.generative.vllm_backend import VLLMBackend

        backend = VLLMBackend(cfg.lm.model, seed=cfg.seed)
    else:
        from icdcoder.coders.generative.backends import HFBackend, load_causal_lm, load_tokenizer

        backend = HFBackend(load_causal_lm(cfg.lm.model), load_tokenizer(cfg.lm.model))
    log(f"code-centric: paraphrasing {len(plain):,} ontology phrasings with {cfg.lm.model}")
    return lm_paraphrases(backend_generator(backend, n=cfg.lm.per_example, seed=cfg.seed), plain,
                          per_example=cfg.lm.per_example)


def build_training_set(cfg: CodeCentricConfig, ds: Dataset, *, log: Callable[[str], None] = print
                       ) -> tuple[list[Note], dict[str, Any]]:
    """The mixed training notes for a config, and what went into them (for ``run.json``)."""
    pool, cov = build_span_pool(cfg, ds, log=log)
    first = None
    if cfg.expand is not None:  # rare and unseen target codes first: they have few documents or none
        counts = Counter(c for n in ds["train"] for c in n.codes)
        first = {c: cfg.expand.min_examples for c in target_codes(cfg, ds)
                 if counts.get(c, 0) <= cfg.expand.max_train_count}
    mixed = mix(ds["train"], pool, cfg.span_ratio, seed=cfg.seed, first=first)
    n_spans = sum(is_span_note(n) for n in mixed)
    drawn = Counter(n.metadata["span_source"] for n in mixed if is_span_note(n))
    info = {"span_pool": len(pool), "documents": len(mixed) - n_spans, "span_examples": n_spans,
            "span_examples_by_source": dict(sorted(drawn.items())),
            "codes_in_span_examples": len({n.codes[0] for n in mixed if is_span_note(n)}), "coverage": cov}
    log(f"code-centric: {info['documents']:,} documents + {n_spans:,} span examples "
        f"({', '.join(f'{k} {v:,}' for k, v in info['span_examples_by_source'].items()) or 'none'}); "
        f"{cov['with_any']:,} of {cov['target_codes']:,} target codes have supervision")
    return mixed, info
