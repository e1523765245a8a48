"""Supervised fine-tuning with TRL: prompt-completion pairs, loss on the answer only, LoRA or full."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from icdcoder.progress import hf_bars_off_terminal
from icdcoder.training.trl_common import TrainSettings, base_args, prepare_weights, train


def run_sft(model, tokenizer, rows: Sequence[dict[str, Any]], settings: TrainSettings, output_dir: str | Path, *,
            seed: int = 13, max_length: int = 2048, desc: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Train on ``rows`` of ``{"prompt": messages, "completion": [assistant message]}``.

    TRL's prompt-completion format masks the prompt out of the loss (``completion_only_loss``), so
    the model learns to write the answer, not to reproduce notes. Resumes from the newest checkpoint
    in ``output_dir`` when one exists. Returns the trained model and a summary of the run. Progress is
    reported as ``desc`` (default ``sft train``).
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = base_args(settings, output_dir, seed)
    args.setdefault("max_length", max_length)
    args.setdefault("completion_only_loss", True)
    weights = prepare_weights(model, settings)
    with hf_bars_off_terminal():
        trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=Dataset.from_list(list(rows)),
                             processing_class=tokenizer, peft_config=settings.lora.peft_config())
        model, info = train(trainer, settings, output_dir, len(rows), desc=desc)
    return model, {**info, **weights}
