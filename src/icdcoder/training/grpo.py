"""GRPO with TRL: a group of sampled answers per note, rewarded by set-level functions of the gold codes.

Rewards are the plain functions of :mod:`icdcoder.training.rewards`; the dataset's ``gold_codes``
column reaches them as a keyword argument. ``beta > 0`` adds a KL penalty to the starting model (the
SFT model), which TRL keeps as a frozen reference copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from icdcoder.distributed import world_size
from icdcoder.progress import hf_bars_off_terminal
from icdcoder.training.trl_common import TrainSettings, base_args, prepare_weights, train


@dataclass
class GRPOSettings(TrainSettings):
    """GRPO-specific knobs on top of the shared ones. ``batch_size`` counts completions per step (per process) and
    must be a multiple of ``num_generations``."""

    num_generations: int = 4
    max_completion_length: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    rewards: dict[str, float] = field(default_factory=lambda: {"f1": 1.0})


def run_grpo(model, tokenizer, rows: Sequence[dict[str, Any]], settings: GRPOSettings, output_dir: str | Path,
             reward_funcs: Sequence[Callable], reward_weights: Sequence[float], *,
             seed: int = 13, desc: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Train on ``rows`` of ``{"prompt": messages, "gold_codes": [...]}``; resumes from ``output_dir``;
    progress is reported as ``desc`` (default ``grpo train``)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if settings.batch_size % settings.num_generations:
        raise ValueError(f"GRPO batch_size ({settings.batch_size}) must be a multiple of num_generations "
                         f"({settings.num_generations})")
    args = base_args(settings, output_dir, seed)
    args.update({k: v for k, v in dict(
        num_generations=settings.num_generations, max_completion_length=settings.max_completion_length,
        temperature=settings.temperature, top_p=settings.top_p, beta=settings.beta,
        # batch_size counts completions per process and step (as per_device_train_batch_size does): under a
        # launcher each of N processes generates and trains on its own batch_size
        reward_weights=list(reward_weights), generation_batch_size=settings.batch_size * world_size(),
    ).items() if k not in settings.trainer_args})
    weights = prepare_weights(model, settings)
    with hf_bars_off_terminal():
        trainer = GRPOTrainer(model=model, reward_funcs=list(reward_funcs), args=GRPOConfig(**args),
                              train_dataset=Dataset.from_list(list(rows)), processing_class=tokenizer,
                              peft_config=settings.lora.peft_config())
        model, info = train(trainer, settings, output_dir, len(rows), desc=desc)
    return model, {**info, **weights}
