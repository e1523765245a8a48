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
      label_space: train               # target codes: train (default), ontology, a file of codes (see below)
      expand: {min_examples: 4, max_train_count: 2}   # rare/unseen target codes get this many examples
      index_file: null                 # CMS ICD-10-CM index XML, for index terms
      spans_file: null                 # more span examples (JSONL, SpanExample)

The target label space never comes from evaluation labels by default: ``train`` is the training split's
codes, ``ontology`` every billable code of the training codes' systems, a path a file of codes. Split
names joined by ``+`` (``train+val``) or ``dataset`` (every split) read the gold of those splits; one
that holds a val or test split is refused unless ``evaluation_labels: true`` says so, and then the run
is flagged (:func:`label_provenance`, ``run.json``, the study report): span examples for codes that
occur only in the evaluation gold tell the coder which codes to expect there.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from icdcoder.codes import CodeSystem, infer_system, normalize_code
from icdcoder.data.note import SPAN_ID_PREFIX, Dataset, Note, Span, is_span_note  # noqa: F401 (re-exported)
from icdcoder.errors import ConfigError, DataError
from icdcoder.training.spans import (SpanExample, coverage, expansion_spans, gold_spans, ontology_spans, read_spans)


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
    label_space: str = "train"
    evaluation_labels: bool = False  # allow a label space read from val/test gold (the run is flagged)
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


EVALUATION_SPLITS = ("val", "test")


class LabelSpace(BaseModel):
    """The target codes of code-centric training and where they came from."""

    model_config = ConfigDict(frozen=True)

    codes: dict[str, CodeSystem]
    source: str  # train | ontology | splits | file
    splits: tuple[str, ...] = ()  # splits whose gold labels were read
    evaluation_only: int = 0  # target codes whose only documents are in val/test

    @property
    def uses_evaluation_labels(self) -> bool:
        return any(s != "train" for s in self.splits)


def _split_names(spec: str, ds: Dataset) -> list[str] | None:
    """``dataset`` -> every split; ``train+val`` -> those; anything else is not a split spec."""
    from icdcoder.data.note import canonical_split

    if spec == "dataset":
        return list(ds.splits)
    parts = [canonical_split(p.strip()) for p in spec.split("+")]
    if all(parts) and all(p in ds or p in ("train", "val", "test") for p in parts) and "/" not in spec:
        return [p for p in dict.fromkeys(parts) if p in ds]
    return None


def _evaluation_only(codes: Mapping[str, Any], ds: Dataset) -> int:
    """Target codes that occur in a val/test split's gold but in no training note."""
    train = ds.code_counts("train") if "train" in ds else Counter()
    held = {c for s in EVALUATION_SPLITS if s in ds for n in ds[s] for c in n.codes}
    return sum(1 for c in codes if c in held and c not in train)


def resolve_label_space(cfg: CodeCentricConfig, ds: Dataset) -> LabelSpace:
    """The target codes of ``cfg.label_space`` (see the module docstring), refusing evaluation labels
    unless ``cfg.evaluation_labels``."""
    spec = cfg.label_space.strip()
    splits = _split_names(spec, ds)
    if splits is not None:
        systems: dict[str, CodeSystem] = {}
        for s in splits:
            for n in ds[s]:
                systems.update(n.code_systems)
        space = LabelSpace(codes={c: systems[c] for c in sorted(systems)}, source="splits", splits=tuple(splits))
        held = [s for s in splits if s != "train"]
        if held and not cfg.evaluation_labels:
            raise ConfigError(
                f"code_centric.label_space {spec!r} reads the gold labels of {'+'.join(held)}: span examples "
                f"for the {_evaluation_only(space.codes, ds):,} codes that occur only there would put "
                "evaluation labels into training. Use 'train' (the default), 'ontology' or a file of codes, "
                "or set code_centric.evaluation_labels: true to do it anyway (the run is flagged)")
        return space.model_copy(update={"evaluation_only": _evaluation_only(space.codes, ds)})
    if spec == "ontology":
        codes = ontology_label_space(ds)
        return LabelSpace(codes=codes, source="ontology", evaluation_only=_evaluation_only(codes, ds))
    path = Path(spec)
    if not path.exists():
        raise DataError("code_centric.label_space is neither train, ontology, split names (train+val), "
                        "dataset, nor a file of codes", path=path)
    codes = read_code_file(path)
    return LabelSpace(codes=codes, source="file", evaluation_only=_evaluation_only(codes, ds))


def ontology_label_space(ds: Dataset) -> dict[str, CodeSystem]:
    """Every billable code of the systems the training labels use: a label space that no split's gold
    chose, for coders that can rank the whole ontology."""
    from icdcoder.ontology import get_ontology

    onto = get_ontology()
    systems = sorted({s for n in ds["train"] for s in n.code_systems.values()}, key=lambda s: s.value)
    return {c: s for s in systems for c in onto.codes(s, billable_only=True)}


def read_code_file(path: Path) -> dict[str, CodeSystem]:
    """One code per line (``code`` or ``code<TAB>system``; ``#`` starts a comment)."""
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


def target_codes(cfg: CodeCentricConfig, ds: Dataset) -> dict[str, CodeSystem]:
    """The codes that should get supervision, with their systems."""
    return resolve_label_space(cfg, ds).codes


def label_provenance(cfg: CodeCentricConfig | None, space: LabelSpace | None = None) -> dict[str, Any]:
    """Which splits' labels a fit saw, for ``run.json`` and the report: documents always come from
    train, the threshold is tuned on val, code-centric targets come from ``space``."""
    out: dict[str, Any] = {"documents": ["train"], "threshold_tuning": ["val"], "code_centric_target": None,
                           "evaluation_labels": False}
    if cfg is not None and space is not None:
        out["code_centric_target"] = {"label_space": cfg.label_space, "source": space.source,
                                      "splits": list(space.splits), "codes": len(space.codes),
                                      "codes_only_in_evaluation_gold": space.evaluation_only}
        out["evaluation_labels"] = space.uses_evaluation_labels
    return out


def build_span_pool(cfg: CodeCentricConfig, ds: Dataset, *, log: Callable[[str], None] = print,
                    space: LabelSpace | None = None) -> tuple[list[SpanExample], dict[str, Any]]:
    """Every span example the config asks for, plus a summary: counts by source, coverage of the pool,
    and ``label_space`` (where the target codes came from, :func:`label_provenance`)."""
    train = ds["train"]
    counts = Counter(c for n in train for c in n.codes)
    space = space or resolve_label_space(cfg, ds)
    target = space.codes
    if space.uses_evaluation_labels:
        log(f"code-centric: WARNING the target label space reads the gold of {'+'.join(space.splits)} "
            f"({space.evaluation_only:,} codes occur only in evaluation gold); this run is flagged")
    elif space.evaluation_only:
        log(f"code-centric: note: {space.evaluation_only:,} codes of the label space {cfg.label_space!r} occur "
            "in the val/test gold but in no training note")
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
    return pool, {**coverage(target, counts, pool), "label_space": label_provenance(cfg, space)}


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
    """The mixed training notes for a config, and what went into them (for ``run.json``).

    ``coverage`` describes the pool; ``drawn_coverage`` the examples that made it into the mix (a small
    ``span_ratio`` draws from a fraction of the pool's codes), which is what the log line reports."""
    space = resolve_label_space(cfg, ds)
    target = space.codes
    pool, cov = build_span_pool(cfg, ds, log=log, space=space)
    counts = Counter(c for n in ds["train"] for c in n.codes)
    first = None
    if cfg.expand is not None:  # rare and unseen target codes first: they have few documents or none
        first = {c: cfg.expand.min_examples for c in target if counts.get(c, 0) <= cfg.expand.max_train_count}
    mixed = mix(ds["train"], pool, cfg.span_ratio, seed=cfg.seed, first=first)
    n_spans = sum(is_span_note(n) for n in mixed)
    drawn = Counter(n.metadata["span_source"] for n in mixed if is_span_note(n))
    drawn_codes = {n.codes[0] for n in mixed if is_span_note(n)}
    with_docs = {c for c in target if counts.get(c, 0) > 0}
    drawn_cov = {"target_codes": len(target), "with_documents": len(with_docs),
                 "with_span_examples": len(drawn_codes & set(target)),
                 "span_only": len((drawn_codes & set(target)) - with_docs),
                 "without_supervision": len(set(target) - with_docs - drawn_codes)}
    info = {"span_pool": len(pool), "documents": len(mixed) - n_spans, "span_examples": n_spans,
            "span_examples_by_source": dict(sorted(drawn.items())),
            "codes_in_span_examples": len(drawn_codes), "coverage": {k: v for k, v in cov.items() if k != "label_space"},
            "drawn_coverage": drawn_cov, "label_space": cov["label_space"]}
    log(f"code-centric: {info['documents']:,} documents + {n_spans:,} span examples "
        f"({', '.join(f'{k} {v:,}' for k, v in info['span_examples_by_source'].items()) or 'none'}) "
        f"for {len(drawn_codes):,} codes; of {drawn_cov['target_codes']:,} target codes "
        f"({cov['label_space']['code_centric_target']['label_space']}), {drawn_cov['with_documents']:,} have "
        f"training documents, {drawn_cov['with_span_examples']:,} got span examples "
        f"({drawn_cov['span_only']:,} of them no document), {drawn_cov['without_supervision']:,} got neither")
    return mixed, info
