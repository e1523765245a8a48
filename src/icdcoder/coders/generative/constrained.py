"""Constrained decoding: a causal LM may only write answers made of codes from the label space.

The answer grammar is ``<code>`` + zero or more distinct allowed codes joined by ``, `` + ``</code>``,
then end-of-sequence. ``CodeGrammar`` recognises prefixes of that language character by character;
``CodeConstraintProcessor`` is a transformers ``LogitsProcessor`` that, at every step, keeps only the
tokens whose text keeps the answer a viable prefix (and only EOS once the answer is complete).

Why characters and not token ids: the same text can be tokenised many ways (``I10`` may be one token
or three), and a sampled model is free to pick any of them. Checking the *text* each token would add
accepts every tokenisation, so the constraint never forces an unnatural split on the model.

Token surface strings. A token's text is not ``convert_ids_to_tokens`` (byte-level BPE spells a space
``Ġ``, SentencePiece ``▁``), and decoding an id on its own drops the leading space of SentencePiece
tokens (the Metaspace decoder strips it at the start of a text). ``token_surfaces`` therefore decodes
each id *after a fixed anchor token* and keeps what the id added; for byte-level BPE that equals
``tokenizer.decode([id])`` (spaces included), for Metaspace it keeps the space. Tokens that are only a
piece of a multi-byte character decode to U+FFFD and so never fit a grammar of plain codes.
With SentencePiece this is deliberately strict at the start: a first token ``▁<code>`` reads as
`` <code>`` and is refused, so the model writes ``<code>`` with no space before it.
"""

from __future__ import annotations

import copy
from bisect import bisect_left
from typing import Iterable, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

# Parser configurations (tuples, so states hash and can be cached):
#   ("open", i)                  i characters of the opening tag read
#   ("code", prefix, used, first) reading a code; ``prefix`` so far, ``used`` the codes already
#                                written, ``first`` when no code was written yet (the close tag may
#                                come straight away: the empty answer)
#   ("sep", i, used)             i characters of the separator read after a code
#   ("close", i)                 i characters of the closing tag read
#   ("done",)                    the answer is complete
_DONE = ("done",)
State = frozenset


class CodeGrammar:
    """Prefix recogniser for ``<open>`` code (sep code)* ``<close>`` over a fixed code set.

    A state is the set of parser configurations reachable after the text read so far (a tiny NFA,
    so codes that are prefixes of others, like ``E11`` and ``E11.9``, need no special case). A state
    is empty exactly when the text can no longer become a sentence. With ``unique`` (the default) a
    code may appear once; dead ends are pruned, so a viable text always has a complete extension.
    """

    def __init__(self, codes: Iterable[str], open: str = "<code>", close: str = "</code>", sep: str = ", ",
                 unique: bool = True):
        if not close or not sep:
            raise ValueError("the close tag and the separator must be non-empty")
        self.open, self.close, self.sep, self.unique = open, close, sep, unique
        self.codes = frozenset(codes)
        for code in self.codes:
            if not code:
                raise ValueError("empty code in the label space")
            for part, name in ((sep, "separator"), (close, "close tag"), (open, "open tag")):
                if part and part in code:
                    raise ValueError(f"code {code!r} contains the {name} {part!r}")
        # For every prefix of a code: how many codes extend it, and which characters may follow it.
        self._count: dict[str, int] = {}
        self._next: dict[str, set[str]] = {}
        for code in self.codes:
            for k in range(len(code) + 1):
                prefix = code[:k]
                self._count[prefix] = self._count.get(prefix, 0) + 1
                if k < len(code):
                    self._next.setdefault(prefix, set()).add(code[k])
        first = ("code", "", frozenset(), True)
        self._start: State = frozenset([("open", 0)] if open else [first])

    # -- states ------------------------------------------------------------------------------------

    def start(self) -> State:
        return self._start

    def advance(self, state: State, text: str) -> State:
        """The state after reading ``text``; empty when ``text`` leaves the language."""
        for ch in text:
            if not state:
                break
            state = frozenset(nxt for conf in state for nxt in self._step(conf, ch))
        return state

    def next_chars(self, state: State) -> set[str]:
        """Characters that may follow (a superset: ``advance`` has the last word)."""
        chars: set[str] = set()
        for conf in state:
            kind = conf[0]
            if kind == "open":
                chars.add(self.open[conf[1]])
            elif kind == "sep":
                chars.add(self.sep[conf[1]])
            elif kind == "close":
                chars.add(self.close[conf[1]])
            elif kind == "code":
                _, prefix, used, first = conf
                chars.update(self._next.get(prefix, ()))
                if prefix == "" and first:
                    chars.add(self.close[0])
                if prefix in self.codes:
                    chars.update((self.sep[0], self.close[0]))
        return chars

    @staticmethod
    def is_complete(state: State) -> bool:
        return _DONE in state

    # -- strings -----------------------------------------------------------------------------------

    def viable(self, s: str) -> bool:
        """True when ``s`` is a prefix of some sentence of the grammar (the empty string included)."""
        return bool(self.advance(self._start, s))

    def complete(self, s: str) -> bool:
        """True when ``s`` is a whole sentence (EOS may follow)."""
        return self.is_complete(self.advance(self._start, s))

    # -- one character -----------------------------------------------------------------------------

    def _step(self, conf: tuple, ch: str) -> list[tuple]:
        kind = conf[0]
        out: list[tuple] = []
        if kind == "open":
            i = conf[1] + 1
            if self.open[i - 1] == ch:
                out.append(("open", i) if i < len(self.open) else ("code", "", frozenset(), True))
        elif kind == "sep":
            i, used = conf[1] + 1, conf[2]
            if self.sep[i - 1] == ch:
                out.append(("sep", i, used) if i < len(self.sep) else ("code", "", used, False))
        elif kind == "close":
            i = conf[1] + 1
            if self.close[i - 1] == ch:
                out.append(("close", i) if i < len(self.close) else _DONE)
        elif kind == "code":
            _, prefix, used, first = conf
            longer = prefix + ch
            if longer in self._count and self._has_unused(longer, used):
                out.append(("code", longer, used, False))
            if prefix == "" and first and ch == self.close[0]:
                out.append(self._after_close_char())
            if prefix in self.codes and (not self.unique or prefix not in used):
                now_used = used | {prefix} if self.unique else used
                if ch == self.sep[0] and self._has_unused("", now_used):
                    out.append(("sep", 1, now_used) if len(self.sep) > 1 else ("code", "", now_used, False))
                if ch == self.close[0]:
                    out.append(self._after_close_char())
        return out

    def _after_close_char(self) -> tuple:
        return ("close", 1) if len(self.close) > 1 else _DONE

    def _has_unused(self, prefix: str, used: frozenset) -> bool:
        """Some code starting with ``prefix`` has not been written yet (always, without ``unique``)."""
        if not self.unique:
            return True
        taken = sum(1 for code in used if code.startswith(prefix))
        return self._count.get(prefix, 0) > taken


def token_surfaces(tokenizer) -> list[str]:
    """The text each vocabulary id adds when it follows other text (see the module docstring)."""
    size = len(tokenizer)
    anchor_ids = tokenizer.encode("a", add_special_tokens=False)
    if not anchor_ids:
        return [tokenizer.decode([i], clean_up_tokenization_spaces=False) for i in range(size)]
    anchor = anchor_ids[:1]
    anchor_text = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    pairs = tokenizer.batch_decode([anchor + [i] for i in range(size)], clean_up_tokenization_spaces=False)
    surfaces = []
    for i, text in enumerate(pairs):
        if text.startswith(anchor_text):
            surfaces.append(text[len(anchor_text):])
        else:  # a decoder that rewrites across tokens: fall back to the id alone
            surfaces.append(tokenizer.decode([i], clean_up_tokenization_spaces=False))
    return surfaces


class CodeConstraintProcessor(LogitsProcessor):
    """Masks every token that would take the generated answer out of the grammar.

    ``prompt_length`` is the width of the (left-padded) prompt batch: ``input_ids[:, prompt_length:]``
    is what has been generated. The generated text of a row is the concatenation of its tokens'
    surface strings, the same strings the candidates were checked with, so the check and the text
    always agree. A finished row (an EOS was generated), a complete answer, or a row that is out of
    the grammar (only possible if something else forced a token) may only emit EOS.

    Candidates are found by walking the sorted surface strings along the characters the grammar
    allows next, so a step looks only at tokens that start like a valid continuation.
    """

    _MAX_CACHED_STATES = 20_000
    _CHECK_DIRECTLY = 8  # below this many candidate tokens, check each one's whole text at once

    def __init__(self, tokenizer, grammar: CodeGrammar, prompt_length: int,
                 eos_token_id: int | Sequence[int] | None = None):
        if eos_token_id is None:
            eos_token_id = tokenizer.eos_token_id
        if eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; pass eos_token_id")
        self.eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self.grammar = grammar
        self.prompt_length = prompt_length
        self.surfaces = token_surfaces(tokenizer)
        for i in self.eos_ids:  # EOS is decided by completeness, never by its text
            if i < len(self.surfaces):
                self.surfaces[i] = ""
        ranked = sorted((s, i) for i, s in enumerate(self.surfaces) if s)  # empty text never advances
        self._keys = [s for s, _ in ranked]
        self._ids = [i for _, i in ranked]
        self._eos_set = set(self.eos_ids)
        self._eos_tensor = torch.tensor(self.eos_ids, dtype=torch.long)
        self._rows: list[CodeGrammar] | None = None  # one grammar per batch row (for_rows), else self.grammar
        self._row_states: dict[tuple[int, tuple[int, ...]], State] = {}
        self._allowed_cache: dict[tuple[frozenset, State], torch.Tensor] = {}

    def with_prompt_length(self, prompt_length: int) -> "CodeConstraintProcessor":
        """The same constraint for another batch: shares the vocabulary tables (costly to build)."""
        other = copy.copy(self)
        other.prompt_length = prompt_length
        other._row_states = {}
        other._rows = None
        return other

    def for_rows(self, prompt_length: int, grammars: Sequence[CodeGrammar]) -> "CodeConstraintProcessor":
        """A batch whose rows each have their own grammar (e.g. each note's candidate codes); the
        vocabulary tables are shared."""
        other = self.with_prompt_length(prompt_length)
        other._rows = list(grammars)
        return other

    def _grammar(self, row: int) -> CodeGrammar:
        return self._rows[row] if self._rows is not None else self.grammar

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length:].tolist()
        if self._rows is not None and len(self._rows) != len(generated):
            raise ValueError(f"{len(self._rows)} row grammars for a batch of {len(generated)} rows")
        masked = torch.full_like(scores, float("-inf"))
        states: dict[tuple[int, tuple[int, ...]], State] = {}
        for row, ids in enumerate(generated):
            key = (row, tuple(ids))
            keep = self._eos_tensor
            if not self._eos_set.intersection(key[1]):
                grammar = self._grammar(row)
                state = self._state(grammar, key)
                states[key] = state
                if state and not grammar.is_complete(state):
                    keep = self._allowed(grammar, state)
            keep = keep[keep < scores.shape[1]].to(scores.device)
            masked[row, keep] = scores[row, keep]
        self._row_states = states  # next step's rows extend these by one token
        return masked

    def _state(self, grammar: CodeGrammar, key: tuple[int, tuple[int, ...]]) -> State:
        row, ids = key
        parent = self._row_states.get((row, ids[:-1])) if ids else None
        if parent is not None:
            return grammar.advance(parent, self._surface(ids[-1]))
        text = "".join(self._surface(i) for i in ids)
        return grammar.advance(grammar.start(), text)

    def _surface(self, token_id: int) -> str:
        # An id without text (special, or beyond the tokenizer) cannot be part of an answer.
        text = self.surfaces[token_id] if token_id < len(self.surfaces) else ""
        return text or "\x00"

    def _allowed(self, grammar: CodeGrammar, state: State) -> torch.Tensor:
        cache_key = (grammar.codes, state)  # grammars differ only in their codes (frozensets cache their hash)
        cached = self._allowed_cache.get(cache_key)
        if cached is not None:
            return cached
        found: list[int] = []
        keys, advance = self._keys, grammar.advance
        # Depth-first over text prefixes; [lo, hi) are the tokens whose text starts with ``prefix``
        # and ``st`` is the grammar state after ``prefix``. Small ranges are checked token by token.
        stack = [("", state, 0, len(keys))]
        while stack:
            prefix, st, lo, hi = stack.pop()
            if hi - lo <= self._CHECK_DIRECTLY:
                found.extend(self._ids[k] for k in range(lo, hi) if advance(st, keys[k][len(prefix):]))
                continue
            while prefix and lo < hi and keys[lo] == prefix:
                found.append(self._ids[lo])
                lo += 1
            for ch in grammar.next_chars(st):
                a = bisect_left(keys, prefix + ch, lo, hi)
                b = bisect_left(keys, prefix + chr(ord(ch) + 1), a, hi)
                if a < b:
                    nxt = advance(st, ch)
                    if nxt:
                        stack.append((prefix + ch, nxt, a, b))
        if len(self._allowed_cache) >= self._MAX_CACHED_STATES:
            self._allowed_cache.clear()
        result = torch.tensor(sorted(found) or self.eos_ids, dtype=torch.long)
        self._allowed_cache[cache_key] = result
        return result


def constrained_processor(tokenizer, codes: Iterable[str], prompt_length: int,
                          eos_token_id: int | Sequence[int] | None = None, **grammar_options) -> LogitsProcessorList:
    """A ``LogitsProcessorList`` for ``model.generate`` that keeps answers inside ``codes``."""
    grammar = CodeGrammar(codes, **grammar_options)
    return LogitsProcessorList([CodeConstraintProcessor(tokenizer, grammar, prompt_length, eos_token_id)])
