"""A back-end on vLLM's offline engine (``vllm.LLM``): batched, paged-attention generation on CUDA GPUs,
optionally through a LoRA adapter (e.g. one trained by the SFT or GRPO coders).

vLLM is imported only when the back-end is built, so the rest of icdcoder never needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from icdcoder.coders.generative.backends import Backend, Messages, Sampling
from icdcoder.errors import IcdcoderError

_DEFAULT_MAX_LORA_RANK = 16  # vLLM's default; larger adapters need ``max_lora_rank`` raised


class VLLMBackend(Backend):
    """Chat generation with ``vllm.LLM.chat``; the model's own chat template renders the prompts.

    ``model`` is a hub id, a local path or a registered name (:mod:`icdcoder.lm_models`; vLLM loads
    it; icdcoder never downloads anything itself).
    ``lora_path`` is a PEFT adapter folder: LoRA is then enabled, the adapter's rank read from its
    ``adapter_config.json`` so vLLM reserves enough room, and every request goes through the adapter.
    """

    def __init__(self, model: str, *, lora_path: str | Path | None = None, dtype: str = "auto",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.85,
                 tensor_parallel_size: int = 1, seed: int = 0):
        try:
            import vllm
        except ImportError as exc:
            raise IcdcoderError(
                "the vLLM back-end needs the vllm package, which runs on CUDA GPUs: `pip install vllm` on a "
                "CUDA machine, or use the transformers back-end or an OpenAI-compatible endpoint instead"
            ) from exc
        from icdcoder.lm_models import resolve_model

        model = resolve_model(model)  # a named model (smollm2-135m-instruct) -> its prepared folder
        engine_args: dict[str, Any] = dict(model=str(model), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                           tensor_parallel_size=tensor_parallel_size, seed=seed)
        if max_model_len is not None:
            engine_args["max_model_len"] = max_model_len
        self._lora_request = None
        if lora_path is not None:
            lora_path = Path(lora_path)
            if not lora_path.is_dir():
                raise IcdcoderError(f"LoRA adapter folder {lora_path} does not exist")
            from vllm.lora.request import LoRARequest

            engine_args["enable_lora"] = True
            rank = _adapter_rank(lora_path)
            if rank is not None and rank > _DEFAULT_MAX_LORA_RANK:
                engine_args["max_lora_rank"] = 1 << (rank - 1).bit_length()  # vLLM accepts powers of two
            # name, a positive integer id unique among adapters, path
            self._lora_request = LoRARequest("icdcoder-adapter", 1, str(lora_path))
        self.model = str(model)
        self._sampling_params = vllm.SamplingParams
        self._llm = vllm.LLM(**engine_args)
        self._tokenizer = None

    def generate(self, prompts: Sequence[Messages], sampling: Sampling) -> list[list[str]]:
        prompts = [list(p) for p in prompts]
        if not prompts:
            return []
        params = self._sampling_params(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                       max_tokens=sampling.max_new_tokens, seed=sampling.seed)
        options: dict[str, Any] = {"use_tqdm": False}
        if self._lora_request is not None:
            options["lora_request"] = self._lora_request
        outputs = self._llm.chat(prompts, sampling_params=params, **options)
        if len(outputs) != len(prompts):
            raise IcdcoderError(f"vLLM returned {len(outputs)} results for {len(prompts)} prompts")
        results = []
        for request in outputs:  # vLLM returns requests in prompt order
            completions = sorted(request.outputs, key=lambda c: c.index)
            if len(completions) < sampling.n:
                raise IcdcoderError(f"vLLM returned {len(completions)} completion(s) where n={sampling.n} were asked")
            results.append([c.text for c in completions[:sampling.n]])
        return results

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._llm.get_tokenizer()
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in encoded["offset_mapping"]]


def _adapter_rank(folder: Path) -> int | None:
    """The LoRA rank ``r`` (the largest one when ranks differ per module) of a PEFT adapter folder."""
    try:
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ranks = [config.get("r")] + list((config.get("rank_pattern") or {}).values())
    ranks = [r for r in ranks if isinstance(r, int)]
    return max(ranks) if ranks else None
