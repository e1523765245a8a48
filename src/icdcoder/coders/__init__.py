"""Coders: everything that turns notes into ranked, scored, evidenced codes under one interface."""

from icdcoder.coders.base import Coder, coder_class, register

__all__ = ["Coder", "coder_class", "register"]
