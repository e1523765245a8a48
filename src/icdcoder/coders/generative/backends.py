"""Language-model back-ends behind one small interface: chat prompts in, sampled completions out.

A prompt is a list of chat messages (``{"role": "system"|"user"|"assistant", "content": str}``);
each back-end applies the chat template its model needs. ``generate`` returns ``n`` completions per
prompt, in prompt order.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

Messages = list[dict[str, str]]


@dataclass
class Sampling:
    """Decoding settings. ``temperature == 0`` means greedy (then ``n`` must be 1)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("greedy decoding (temperature 0) gives one completion; set temperature > 0 for n > 1")


class Backend(ABC):
    """Generates completions for chat prompts. ``count_tokens`` lets prompt builders fit a budget."""

    @abstractmethod
    def generate(self, prompts: Sequence[Messages], sampling: Sampling) -> list[list[str]]: ...

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``; back-ends without a tokenizer estimate 4 characters per token."""
        return max(1, len(text) // 4)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token of ``text`` (used to cut a long note at token boundaries)."""
        step = 4
        return [(i, min(i + step, len(text))) for i in range(0, len(text), step)]


def load_tokenizer(path: str | Path):
    """The tokenizer saved beside a model. A plain ``PreTrainedTokenizerFast`` folder (the tiny LM's)
    is loaded as exactly that class: ``AutoTokenizer`` may swap in the model family's class and change ids."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from icdcoder.lm_models import resolve_model

    path = resolve_model(path)  # a named model (smollm2-135m-instruct) -> its prepared folder
    cfg = Path(path) / "tokenizer_config.json"
    if cfg.exists() and json.loads(cfg.read_text(encoding="utf-8")).get("tokenizer_class") in (
            "PreTrainedTokenizerFast", "TokenizersBackend"):
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    else:
        tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:  # many instruct models ship without one
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_causal_lm(path: str | Path, *, adapter: str | Path | None = None, merge: bool = True,
                   dtype: str | None = None, device: str | None = None):
    """Any HF causal LM by id, local path or registered name (:mod:`icdcoder.lm_models`), with an
    optional peft LoRA adapter (merged by default)."""
    import torch
    from transformers import AutoModelForCausalLM

    from icdcoder.lm_models import is_registered, resolve_model

    folder = resolve_model(path)  # a named model (smollm2-135m-instruct) -> its prepared folder
    adapter_cfg = Path(folder) / "adapter_config.json"
    if adapter is None and adapter_cfg.exists():  # a saved LoRA adapter (lora.merge: false): load its base
        adapter, path = path, json.loads(adapter_cfg.read_text(encoding="utf-8"))["base_model_name_or_path"]
        folder = resolve_model(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    from icdcoder.progress import hf_bars_off_terminal

    with hf_bars_off_terminal():  # transformers' "Loading weights" bar is a run of \r updates in a log
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch_dtype)
    if is_registered(path):  # a LoRA adapter trained on it records the name, not this machine's cache folder
        model.name_or_path = path
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    return model.to(device).eval()


class HFBackend(Backend):
    """Batched generation with transformers (KV cache, left padding, notes sorted by length).

    ``model`` is an id, a path or a loaded model (then give ``tokenizer``). ``logits_processor``
    is a factory ``(prompt_length, rows) -> LogitsProcessorList`` (constrained decoding) or None;
    ``rows`` is what ``generate`` was given as ``allowed`` for each row of the batch, or None.
    """

    def __init__(self, model, tokenizer=None, *, adapter: str | Path | None = None, batch_size: int = 16,
                 dtype: str | None = None, device: str | None = None, logits_processor=None, progress: bool = True):
        if isinstance(model, (str, Path)):
            self.tokenizer = tokenizer or load_tokenizer(adapter or model)
            self.model = load_causal_lm(model, adapter=adapter, dtype=dtype, device=device)
        else:
            if tokenizer is None:
                raise ValueError("a loaded model needs its tokenizer")
            self.model, self.tokenizer = model, tokenizer
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.logits_processor = logits_processor
        self.progress = progress
        self.generated_tokens = 0  # running count, for throughput reports

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                ["offset_mapping"]]

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: Sequence[Messages], sampling: Sampling,
                 allowed: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
        """``allowed``: per prompt, the codes its answer may use (with a constrained ``logits_processor``)."""
        import torch

        from icdcoder.progress import Progress

        texts = [self.render(m) for m in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]  # tokenized once, padded per batch
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
        out: list[list[str]] = [[] for _ in texts]
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        was_training = self.model.training
        self.model.eval()
        step = max(1, self.batch_size // sampling.n)
        bar = Progress("generate", len(texts), unit="note", enabled=self.progress and len(order) > step).start()
        failed, tokens0 = True, self.generated_tokens
        try:
            for s in range(0, len(order), step):
                idx = order[s:s + step]
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt").to(self.model.device)
                width = enc["input_ids"].shape[1]
                kwargs: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n,
                                              pad_token_id=self.tokenizer.pad_token_id,
                                              eos_token_id=self.tokenizer.eos_token_id, use_cache=True)
                if sampling.temperature > 0:
                    kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
                else:
                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                if self.logits_processor is not None:
                    rows = None if allowed is None else [allowed[i] for i in idx for _ in range(sampling.n)]
                    kwargs["logits_processor"] = self.logits_processor(width, rows)
                with torch.inference_mode():
                    gen = self.model.generate(**enc, **kwargs)
                new = gen[:, width:]
                self.generated_tokens += int((new != self.tokenizer.pad_token_id).sum())
                decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(idx):
                    out[i] = decoded[j * sampling.n:(j + 1) * sampling.n]
                bar.update(len(idx), tokens=self.generated_tokens - tokens0)
            failed = False
        finally:
            bar.close(failed=failed)
            self.model.train(was_training)
        return out
