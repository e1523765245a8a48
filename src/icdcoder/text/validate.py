"""The checks every entry point runs on a note's text before a coder sees it.

Two kinds of text look like notes but are not:

* **Lone surrogates** (``"\\ud800"`` in JSON, or ``surrogateescape`` leftovers): Python holds them
  in a ``str``, but they cannot be encoded as UTF-8, so they fail much later, while an answer that
  quotes them as evidence is written out. :func:`check_note_text` refuses them up front, with the
  position, and never quotes the text (it is patient text).
* **Invisible-only text** (zero-width spaces, BOMs, joiners, soft hyphens, control characters):
  ``str.strip`` keeps them, so an empty-looking note passes an emptiness check. :func:`is_blank`
  treats such text as empty.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

from icdcoder.errors import DataError

__all__ = ["check_note_text", "is_blank"]

#: Categories that print nothing: control (Cc), format (Cf: U+200B, U+FEFF, U+200D, U+00AD, U+2060, bidi
#: marks...), separators (Zs, Zl, Zp) and surrogates (Cs).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Cs"})
#: Default-ignorable code points outside those categories: Hangul fillers, the combining grapheme joiner,
#: Mongolian and other variation selectors, and the braille blank.
_INVISIBLE_EXTRA = frozenset(
    {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x2800, 0x3164, 0xFFA0}
    | set(range(0xFE00, 0xFE10)) | set(range(0xE0100, 0xE01F0)))


def _is_invisible(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in _INVISIBLE_CATEGORIES or ord(ch) in _INVISIBLE_EXTRA


def is_blank(text: str) -> bool:
    """True when ``text`` shows nothing: empty, whitespace, or only invisible characters (U+200B, U+FEFF...)."""
    return all(_is_invisible(ch) for ch in text)  # stops at the first visible character, usually the first


def check_note_text(text: str, where: str = "text", *, path: str | Path | None = None,
                    line: int | None = None) -> str:
    """``text`` unchanged when it is valid Unicode; otherwise a :class:`~icdcoder.errors.DataError`
    naming ``where`` (the field), and ``path``/``line`` when given, with the character position.

    Only lone surrogates are refused here; whether blank text is allowed is the caller's rule (see
    :func:`is_blank`). The message never quotes the text.
    """
    try:
        text.encode("utf-8")  # C speed; only surrogates (U+D800-U+DFFF) fail
    except UnicodeEncodeError as e:
        raise DataError(f"invalid Unicode: lone surrogate U+{ord(text[e.start]):04X} at character {e.start + 1} "
                        "(not a character; the note is not valid UTF-8 text)",
                        path=path, line=line, field=where) from None
    return text
