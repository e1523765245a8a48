"""Span data for code-centric learning: short evidence text and the code it supports, from three sources.

1. ``gold``: evidence spans annotated in a dataset (CodiEsp's X files, the synthetic corpus), read
   from ``Note.spans`` (optionally with ``context_chars`` of the note around them);
2. the ontology: each code's description, inclusion terms and (when a CMS index file is given) index
   terms, rewritten into the short phrasings notes use (:mod:`icdcoder.training.phrasing`), optionally
   paraphrased by a language model (:func:`lm_paraphrases`);
3. ``expansion``: codes that are rare or absent in document-level training get several examples each
   (their phrasings written into typical note fragments), so every code of the target label space has
   supervision.

One format for all: :class:`SpanExample` (``text``, ``code``, ``system``, ``source``, optional
``context`` and ``note_id``), stored as JSONL by :func:`write_spans` / :func:`read_spans`.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from icdcoder.codes import CodeSystem
from icdcoder.data.note import Note, first_error
from icdcoder.errors import DataError
from icdcoder.io import atomic_write, iter_jsonl

Source = Literal["gold", "description", "inclusion", "index", "rewrite", "lm", "expansion"]
SOURCES: tuple[str, ...] = ("gold", "description", "inclusion", "index", "rewrite", "lm", "expansion")


class SpanExample(BaseModel):
    """A short text that supports one code. ``context`` is the surrounding note text (gold spans only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1)
    code: str = Field(min_length=1)
    system: CodeSystem
    source: Source
    context: str | None = None
    note_id: str | None = None


# ---------------------------------------------------------------- 1. gold spans
def gold_spans(notes: Iterable[Note], *, context_chars: int = 0, max_chars: int = 200) -> list[SpanExample]:
    """Every annotated span of ``notes`` (whitespace collapsed; longer than ``max_chars`` are cut).
    ``context_chars`` > 0 keeps that many characters of the note on each side in ``context``."""
    out = []
    for n in notes:
        for sp in n.spans:
            text = " ".join(n.text[sp.start:sp.end].split())[:max_chars]
            if not text:
                continue
            ctx = None
            if context_chars > 0:
                ctx = " ".join(n.text[max(0, sp.start - context_chars):sp.end + context_chars].split())
            out.append(SpanExample(text=text, code=sp.code, system=n.code_systems[sp.code], source="gold",
                                   context=ctx, note_id=n.id))
    return out


# ---------------------------------------------------------------- 2. the ontology
def ontology_spans(codes: Mapping[str, CodeSystem | str], *, index_terms: Mapping[str, Sequence[str]] | None = None,
                   max_per_code: int = 8, ontology: Any = None) -> list[SpanExample]:
    """Descriptions, inclusion terms, index terms and their rule-based rewrites for each code.
    Codes the packaged ontology does not know (or whose system has no descriptions) give nothing."""
    from icdcoder.training.phrasing import code_phrasings

    if ontology is None:
        from icdcoder.ontology import get_ontology

        ontology = get_ontology()
    out = []
    for code, system in codes.items():
        sys_ = CodeSystem(system)
        idx = index_terms if sys_ is CodeSystem.ICD10CM else None
        for phrase, kind in code_phrasings(code, sys_.value, ontology=ontology, index_terms=idx,
                                           max_forms=max_per_code):
            out.append(SpanExample(text=phrase, code=code, system=sys_, source=kind))
    return out


def lm_paraphrases(generate: Callable[[list[str]], list[list[str]]], examples: Sequence[SpanExample], *,
                   per_example: int = 2) -> list[SpanExample]:
    """Optional LM rewrites of ontology phrasings (source ``lm``).

    ``generate`` takes prompts and returns candidate lines per prompt; :func:`backend_generator` builds
    one from any generative back-end (HF, vLLM, an OpenAI-compatible endpoint). Lines that are empty,
    too long, or repeat the phrase are dropped; at most ``per_example`` are kept for each example."""
    prompts = [PARAPHRASE_PROMPT.format(text=e.text) for e in examples]
    out = []
    for e, lines in zip(examples, generate(prompts)):
        seen = {e.text.lower()}
        kept = 0
        for line in lines:
            line = line.strip().strip("-*•\"' ").strip()
            if not line or len(line) > 3 * len(e.text) + 20 or line.lower() in seen:
                continue
            seen.add(line.lower())
            out.append(SpanExample(text=line, code=e.code, system=e.system, source="lm"))
            kept += 1
            if kept == per_example:
                break
    return out


PARAPHRASE_PROMPT = ("Rewrite the diagnosis below the way a physician writes it in a discharge summary: short "
                     "phrases, common abbreviations allowed, same meaning (do not add history, negation or "
                     "severity). One phrasing per line, nothing else.\nDiagnosis: {text}")


def backend_generator(backend: Any, *, n: int = 2, max_new_tokens: int = 48,
                      temperature: float = 0.8, seed: int = 13) -> Callable[[list[str]], list[list[str]]]:
    """``generate`` for :func:`lm_paraphrases` from a generative back-end: ``n`` samples per prompt, each
    split into lines."""
    from icdcoder.coders.generative.backends import Sampling

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, n=n, seed=seed)

    def generate(prompts: list[str]) -> list[list[str]]:
        outs = backend.generate([[{"role": "user", "content": p}] for p in prompts], sampling)
        return [[line for o in per for line in o.splitlines()] for per in outs]

    return generate


# ---------------------------------------------------------------- 3. expansion for rare and unseen codes
# Typical note fragments a phrasing is written into: the section a diagnosis is stated in.
TEMPLATES = ("{p}", "Assessment: {p}.", "Diagnosis: {p}", "- {p}", "Patient with {p}.",
             "Discharge diagnoses: {p}", "{P}, treated during this admission.", "Problem list: {p}")


def expansion_spans(target: Mapping[str, CodeSystem | str], train_counts: Mapping[str, int],
                    available: Sequence[SpanExample], *, min_examples: int = 4, max_train_count: int = 2,
                    seed: int = 13) -> list[SpanExample]:
    """Extra examples (source ``expansion``) for each target code seen at most ``max_train_count`` times in
    document-level training, until it has ``min_examples`` span examples counting ``available`` ones.

    New examples write the code's ontology-based phrasings (from ``available``) into note fragments
    (:data:`TEMPLATES`), cycling phrasings and templates so no example repeats. A code with no phrasing
    at all (unknown to the ontology) stays uncovered: :func:`coverage` reports it."""
    rng = random.Random(seed)
    by_code: dict[str, list[SpanExample]] = defaultdict(list)
    for e in available:
        by_code[e.code].append(e)
    out = []
    for code in sorted(target):
        if train_counts.get(code, 0) > max_train_count:
            continue
        have = by_code.get(code, [])
        need = min_examples - len(have)
        phrases = list(dict.fromkeys(e.text for e in have if e.source != "gold"))
        if need <= 0 or not phrases:
            continue
        combos = [(p, t) for t in TEMPLATES[1:] for p in phrases]  # the bare phrasing is already there
        rng.shuffle(combos)
        system = CodeSystem(target[code])
        for p, t in combos[:need]:
            text = t.format(p=p, P=p[:1].upper() + p[1:])
            out.append(SpanExample(text=text, code=code, system=system, source="expansion"))
    return out


def coverage(target: Iterable[str], train_counts: Mapping[str, int], spans: Sequence[SpanExample]) -> dict[str, Any]:
    """How much of the target label space has any supervision: document-level, span-level, or none."""
    with_spans = {e.code for e in spans}
    target = set(target)
    doc = {c for c in target if train_counts.get(c, 0) > 0}
    return {"target_codes": len(target), "with_documents": len(doc), "with_spans": len(target & with_spans),
            "with_any": len(doc | (target & with_spans)),
            "uncovered": sorted(target - doc - with_spans)[:50],
            "spans_by_source": {s: sum(e.source == s for e in spans) for s in SOURCES if any(e.source == s
                                                                                             for e in spans)}}


# ---------------------------------------------------------------- storage
def write_spans(spans: Iterable[SpanExample], path: str | Path) -> int:
    """Atomic JSONL, one example per line; returns how many were written."""
    k = 0
    with atomic_write(path) as fh:
        for e in spans:
            fh.write(json.dumps(e.model_dump(mode="json", exclude_none=True), ensure_ascii=False) + "\n")
            k += 1
    return k


def read_spans(path: str | Path) -> list[SpanExample]:
    """Span examples from JSONL; a bad line is an error naming the file, line and field."""
    out = []
    for lineno, obj in iter_jsonl(path):
        try:
            out.append(SpanExample.model_validate(obj))
        except ValidationError as e:
            loc, msg = first_error(e)
            raise DataError(msg, path=path, line=lineno, field=loc or None) from None
    return out
