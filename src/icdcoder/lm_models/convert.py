"""GGUF -> an ordinary transformers folder (fp32 safetensors, tokenizer, chat template).

transformers reads a GGUF (with ``gguf`` and ``accelerate`` installed) and dequantizes it to plain
fp32 ``Linear`` layers, but converting the tokenizer takes 25-60 s. It is done once, here; the saved
folder then loads in seconds with the ordinary loaders. The model comes back marked as quantized
(``hf_quantizer``, ``config.quantization_config``): ``save_pretrained`` refuses to write it and
trainers would see a frozen model, so both marks are removed; the weights are already plain fp32.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

from icdcoder.errors import IcdcoderError
from icdcoder.lm_models.registry import GGUF_SUPPORT


def join_pieces(pieces: list[Path], target: Path) -> str:
    """Write ``pieces`` one after the other into ``target`` (one piece is copied); the sha256."""
    h = hashlib.sha256()
    with open(target, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
                    out.write(block)
    return h.hexdigest()


def convert_gguf(gguf: Path, out: Path, *, chat_template: str | None = None,
                 eos_token: str | None = None) -> dict[str, Any]:
    """Save the model and tokenizer of ``gguf`` into ``out``; what the manifest records about it.
    ``chat_template`` is used when the GGUF has none; ``eos_token`` replaces its end-of-text token
    (the generation back-ends stop at the tokenizer's eos)."""
    missing = [p for p in GGUF_SUPPORT if importlib.util.find_spec(p) is None]
    if missing:
        raise IcdcoderError(f"reading a GGUF file needs {' and '.join(missing)}: "
                            f"python -m pip install -c constraints.txt {' '.join(missing)}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = chat_template
    if eos_token:
        eos_id = tok.convert_tokens_to_ids(eos_token)
        if eos_id is None or eos_id == tok.unk_token_id:
            raise IcdcoderError(f"{gguf.name}: its vocabulary has no {eos_token}")
        tok.eos_token = eos_token
        model.generation_config.eos_token_id = eos_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"chat_template": bool(getattr(tok, "chat_template", None)),
            "parameters": sum(p.numel() for p in model.parameters())}
