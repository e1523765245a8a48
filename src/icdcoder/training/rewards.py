"""GRPO rewards as plain functions, in TRL's calling convention ``f(prompts, completions, **columns)``.

TRL passes each dataset column as a keyword list with one entry per completion; these rewards read
``gold_codes`` (a list of code lists) and, when the dataset has one, ``system`` (a code-system name per
row). Without a ``system`` column the system of every code is inferred from its shape, so ICD-9 and
ICD-10 data both work; a factory's ``system=`` argument overrides both.

Content rewards parse syntactically (every well-formed code counts): a made-up code simply fails to
match the gold set, and asking the ontology inside every training step would be slow for nothing.
:func:`invalid_code_penalty` and :func:`rule_penalty` (the rule engine's checks) are the rewards that
check validity. TRL logs rewards by function name,
so the factories return functions with a telling ``__name__``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Collection, Container, Mapping, Sequence

from icdcoder.codes import CodeFormatError, CodeSystem, infer_system, normalize_code, parse_system
from icdcoder.coders.generative.answer import ParsedAnswer, parse_answer

RewardFunc = Callable[..., list[float]]


def _any_code(code: str) -> bool:
    return True


def completion_text(completion: Any) -> str:
    """The generated text of one completion: a string, or a chat message list (assistant turns joined)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return _content_text(completion.get("content"))
    messages = list(completion)
    spoken = [m for m in messages if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"]
    return "\n".join(_content_text(m.get("content")) for m in spoken)


def _content_text(content: Any) -> str:
    """Message content is a string or, in the multimodal layout, a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        return str(content)
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


# --- set metrics -------------------------------------------------------------------------------------
def set_fbeta(pred: Collection[str], gold: Collection[str], beta: float) -> float:
    """F-beta of one predicted code set against the gold set; beta > 1 weighs recall higher.

    Two empty sets agree perfectly (1.0): a note without codes answered with none is right.
    """
    if not beta > 0 or math.isinf(beta):
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    pred, gold = set(pred), set(gold)
    if not pred and not gold:
        return 1.0
    tp = len(pred & gold)
    b2 = beta * beta
    return (1 + b2) * tp / ((1 + b2) * tp + b2 * len(gold - pred) + len(pred - gold))


def set_f1(pred: Collection[str], gold: Collection[str]) -> float:
    return set_fbeta(pred, gold, 1.0)


# --- plumbing shared by the rewards ---------------------------------------------------------------------
def _systems(n: int, override: str | CodeSystem | None, column: Sequence[Any] | None) -> list[CodeSystem | None]:
    """The code system of each row: the factory's override, else the dataset column, else inferred."""
    if override is not None:
        return [parse_system(override)] * n
    if column is None:
        return [None] * n
    if len(column) != n:
        raise ValueError(f"system column has {len(column)} rows for {n} completions")
    return [parse_system(s) if s else None for s in column]


def _canonical(code: str, system: CodeSystem | None) -> str:
    """Gold codes in the parser's canonical form; a code that does not normalise is kept as written."""
    try:
        return normalize_code(code, system or infer_system(code))
    except (CodeFormatError, ValueError, IndexError):
        return str(code).strip().upper()


def _gold_sets(gold_codes: Sequence[Any] | None, n: int, systems: list[CodeSystem | None]) -> list[set[str]]:
    if gold_codes is None:
        raise TypeError("this reward needs a gold_codes column (one list of codes per completion)")
    if len(gold_codes) != n:
        raise ValueError(f"gold_codes has {len(gold_codes)} rows for {n} completions")
    sets = []
    for row, system in zip(gold_codes, systems):
        if isinstance(row, str):
            raise TypeError("each gold_codes row must be a list of codes, not one string")
        sets.append({_canonical(code, system) for code in (row or [])})
    return sets


def _parse_all(
    completions: Sequence[Any],
    systems: list[CodeSystem | None],
    valid: Callable[[str], bool] | Container[str] | None = _any_code,
) -> list[ParsedAnswer]:
    return [parse_answer(completion_text(c), system=s, valid=valid) for c, s in zip(completions, systems)]


def _named(func: RewardFunc, name: str) -> RewardFunc:
    func.__name__ = func.__qualname__ = name
    return func


# --- rewards -----------------------------------------------------------------------------------------
def f1_reward(prompts: Sequence[Any], completions: Sequence[Any], gold_codes: Sequence[Any] | None = None,
              **kwargs: Any) -> list[float]:
    """Sample-level F1 of the answered code set against the gold codes."""
    systems = _systems(len(completions), None, kwargs.get("system"))
    golds = _gold_sets(gold_codes, len(completions), systems)
    return [set_f1(p.codes, g) for p, g in zip(_parse_all(completions, systems), golds)]


def fbeta_reward(beta: float, *, system: str | CodeSystem | None = None) -> RewardFunc:
    """Sample-level F-beta; beta = 2 rewards recall (a missed code costs more than a spurious one)."""
    set_fbeta((), (), beta)  # validates beta now rather than at the first training step

    def reward(prompts: Sequence[Any], completions: Sequence[Any], gold_codes: Sequence[Any] | None = None,
               **kwargs: Any) -> list[float]:
        systems = _systems(len(completions), system, kwargs.get("system"))
        golds = _gold_sets(gold_codes, len(completions), systems)
        return [set_fbeta(p.codes, g, beta) for p, g in zip(_parse_all(completions, systems), golds)]

    return _named(reward, f"f{beta:g}_reward")


def weighted_f1_reward(code_weights: Mapping[str, float], default: float = 1.0, *,
                       system: str | CodeSystem | None = None) -> RewardFunc:
    """F1 of weighted precision and recall: each code counts with its weight (rare codes can weigh more).

    With W the summed weight of a set, precision = W(hit) / W(pred) and recall = W(hit) / W(gold); their
    harmonic mean is 2 W(hit) / (W(pred) + W(gold)), which is what is computed (it stays defined when one
    side weighs nothing). Codes missing from ``code_weights`` weigh ``default``. Both sets empty: 1.0.
    """
    if default < 0 or any(w < 0 for w in code_weights.values()):
        raise ValueError("code weights must be non-negative")
    fixed = parse_system(system) if system is not None else None
    weights = {_canonical(code, fixed): float(w) for code, w in code_weights.items()}

    def weight(codes: Collection[str]) -> float:
        return sum(weights.get(code, default) for code in codes)

    def score(pred: set[str], gold: set[str]) -> float:
        if not pred and not gold:
            return 1.0
        total = weight(pred) + weight(gold)
        if total == 0:
            return 1.0 if pred == gold else 0.0
        return 2 * weight(pred & gold) / total

    def reward(prompts: Sequence[Any], completions: Sequence[Any], gold_codes: Sequence[Any] | None = None,
               **kwargs: Any) -> list[float]:
        systems = _systems(len(completions), system, kwargs.get("system"))
        golds = _gold_sets(gold_codes, len(completions), systems)
        return [score(set(p.codes), g) for p, g in zip(_parse_all(completions, systems), golds)]

    return _named(reward, "weighted_f1_reward")


def invalid_code_penalty(valid: Callable[[str], bool] | Container[str] | None, penalty: float = 0.1, *,
                         system: str | CodeSystem | None = None) -> RewardFunc:
    """Minus ``penalty`` per distinct invalid code in the answer (floored at -1); 0.0 when all are valid.

    ``valid`` is what :func:`parse_answer` takes: a predicate, the label space, or None for the ontology.
    """
    if penalty < 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        systems = _systems(len(completions), system, kwargs.get("system"))
        return [-min(1.0, penalty * len(p.invalid)) for p in _parse_all(completions, systems, valid)]

    return _named(reward, "invalid_code_penalty")


def rule_penalty(config: Any = None, penalty: float = 0.1, *, system: str | CodeSystem | None = None,
                 label_space: Collection[str] | None = None) -> RewardFunc:
    """Minus ``penalty`` per coding-rule violation in the answer (floored at -1): invalid codes,
    categories instead of billable codes, a parent with its own child, Excludes1 pairs. The checks
    are the rule engine's (:class:`icdcoder.rules.RuleConfig` ``config`` says which), so what GRPO
    teaches and what the engine edits after prediction are the same rules."""
    from icdcoder.rules.engine import RuleEngine

    if penalty < 0:
        raise ValueError(f"penalty must be non-negative, got {penalty}")
    engine = RuleEngine(config, label_space=label_space)

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        systems = _systems(len(completions), system, kwargs.get("system"))
        out = []
        for p, row_system in zip(_parse_all(completions, systems), systems):
            def system_of(code: str, s: CodeSystem | None = row_system) -> CodeSystem | None:
                try:
                    return s or infer_system(code)
                except (CodeFormatError, ValueError):
                    return None
            out.append(-min(1.0, penalty * len(engine.violations(p.codes, system_of))))
        return out

    return _named(reward, "rule_penalty")


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 for exactly one closed ``<code>`` block with nothing wrong in it (no problem reported), else 0.0.

    Text before or after the block is allowed; invalid codes are the penalty's business, not this one's.
    """
    systems = _systems(len(completions), None, kwargs.get("system"))
    return [0.0 if p.problems else 1.0 for p in _parse_all(completions, systems)]


def evidence_reward(prompts: Sequence[Any], completions: Sequence[Any], note_text: Sequence[str] | None = None,
                    **kwargs: Any) -> list[float]:
    """Share of the answered codes whose quoted evidence is found in the note (exact or fuzzy); a code
    without a quote counts as unsupported. 0.0 for an answer without codes. Needs a ``note_text`` column."""
    from icdcoder.coders.generative.quotes import locate_all

    if note_text is None or len(note_text) != len(completions):
        raise TypeError("evidence_reward needs a note_text column (the note of each completion)")
    systems = _systems(len(completions), None, kwargs.get("system"))
    out = []
    for p, text in zip(_parse_all(completions, systems), note_text):
        if not p.codes:
            out.append(0.0)
            continue
        quotes = [p.evidence.get(c, []) for c in p.codes]
        located = iter(locate_all(text, [q for qs in quotes for q in qs]))  # the note prepared once
        hits = sum(any([next(located) is not None for _ in qs]) for qs in quotes)  # list: consume every quote
        out.append(hits / len(p.codes))
    return out


def combine(*weighted: tuple[RewardFunc, float]) -> tuple[list[RewardFunc], list[float]]:
    """``(f, w)`` pairs -> the two lists GRPO takes: ``GRPOConfig(reward_weights=...)`` and ``reward_funcs``."""
    if not weighted:
        raise ValueError("combine needs at least one (reward function, weight) pair")
    funcs, weights = [], []
    for pair in weighted:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise TypeError(f"expected (reward function, weight) pairs, got {pair!r}")
        func, w = pair
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"weight of {getattr(func, '__name__', func)} must be a finite number, got {w!r}")
        funcs.append(func)
        weights.append(float(w))
    return funcs, weights
