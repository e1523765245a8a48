"""The PHI curriculum: extra GRPO rounds on the training notes where the model still misses gold codes.

Per round: run the model hint-free over the training notes (or a sample of ``scan_notes``), collect
per note the gold codes it missed, weight each code by ``(1/sqrt(freq)) * (1/max(recall, 0.05))``
capped at 3x the median weight, and build one GRPO epoch over the notes that still miss codes. With
probability ``hint_prob`` a note's prompt carries a training hint naming 1-5 of its missed codes (drawn
without replacement with probability proportional to ``weight ** (1/3)``, with descriptions); the
reward stays F1 against the full gold set, and evaluation never sees hints.

Everything here is a plain function over code sets, so it is tested without a model.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass
class PhiSettings:
    rounds: int = 2
    hint_prob: float = 0.5
    max_hint_codes: int = 5
    recall_floor: float = 0.05
    cap: float = 3.0                 # weights capped at cap x the median
    power: float = 1 / 3             # hint codes drawn with probability ~ weight ** power
    max_notes_per_round: int | None = None  # cap the pool (the most-missing notes first) to bound a round
    scan_notes: int | None = None    # run the model over this many training notes per round (a seeded sample;
    #                                  None: all): the scan is generation over notes, the round's main cost on CPU


def missed_codes(gold: Mapping[str, Sequence[str]], predicted: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Per note id, the gold codes missing from the prediction (only notes that miss any)."""
    out = {}
    for nid, g in gold.items():
        got = set(predicted.get(nid, ()))
        miss = sorted(c for c in set(g) if c not in got)
        if miss:
            out[nid] = miss
    return out


def code_recall(gold: Mapping[str, Sequence[str]], predicted: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Per gold code, the share of its notes where it was predicted."""
    hit: dict[str, int] = {}
    tot: dict[str, int] = {}
    for nid, g in gold.items():
        got = set(predicted.get(nid, ()))
        for c in set(g):
            tot[c] = tot.get(c, 0) + 1
            hit[c] = hit.get(c, 0) + (c in got)
    return {c: hit[c] / tot[c] for c in tot}


def code_weights(freq: Mapping[str, int], recall: Mapping[str, float], *, floor: float = 0.05,
                 cap: float = 3.0) -> dict[str, float]:
    """``(1/sqrt(freq)) * (1/max(recall, floor))`` per code, capped at ``cap`` x the median weight."""
    raw = {c: (1 / math.sqrt(max(freq.get(c, 1), 1))) * (1 / max(r, floor)) for c, r in recall.items()}
    if not raw:
        return {}
    limit = cap * statistics.median(raw.values())
    return {c: min(w, limit) for c, w in raw.items()}


def sample_hint(missed: Sequence[str], weights: Mapping[str, float], rng: random.Random, *,
                max_codes: int = 5, power: float = 1 / 3) -> list[str]:
    """1..``max_codes`` of ``missed`` (how many: uniform), drawn without replacement ~ weight**power."""
    pool = list(dict.fromkeys(missed))
    if not pool:
        return []
    k = rng.randint(1, min(max_codes, len(pool)))
    chosen = []
    for _ in range(k):
        w = [max(weights.get(c, 1.0), 1e-12) ** power for c in pool]
        i = rng.choices(range(len(pool)), weights=w)[0]
        chosen.append(pool.pop(i))
    return sorted(chosen)


def build_round(missed: Mapping[str, Sequence[str]], weights: Mapping[str, float], rng: random.Random,
                settings: PhiSettings) -> list[tuple[str, list[str]]]:
    """One round's pool: ``(note id, hint codes)`` per note that misses codes; the hint is empty for
    the ``1 - hint_prob`` share of notes that train hint-free."""
    ids = sorted(missed, key=lambda n: (-sum(weights.get(c, 1.0) for c in missed[n]), n))
    if settings.max_notes_per_round is not None:
        ids = ids[: settings.max_notes_per_round]
    pool = []
    for nid in ids:
        hint = sample_hint(missed[nid], weights, rng, max_codes=settings.max_hint_codes, power=settings.power) \
            if rng.random() < settings.hint_prob else []
        pool.append((nid, hint))
    rng.shuffle(pool)
    return pool
