"""Note text shared by coders: normalisation with an offset map back to the original characters,
sentences and section headers, and the assertion status of a mention (negated, possible, family,
historical, present).

Every offset this package returns refers to the original note text, so ``text[start:end]`` is the
evidence a reader sees. It imports nothing from icdcoder but :mod:`icdcoder.codes` (and not even
that today); spaCy and negspacy are imported inside :mod:`icdcoder.text.assertion` only when a
mention's assertion is asked for, so ``import icdcoder.text`` stays light. Nothing here logs note
text.
"""

from icdcoder.text.normalize import Token, fold_token, term_tokens, tokenize
from icdcoder.text.sections import Section, find_sections, section_at, split_sentences

__all__ = ["Section", "Token", "find_sections", "fold_token", "section_at", "split_sentences",
           "term_tokens", "tokenize"]
