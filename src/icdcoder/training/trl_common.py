"""What SFT and GRPO share: device-aware trainer defaults, LoRA config, checkpoint resume, progress.

TRL's defaults are GPU defaults (bf16, gradient checkpointing); on CPU they make a tiny run ~13x
slower, so without CUDA both are switched off and ``use_cpu`` is set. Anything in a config's
``trainer_args`` overrides these defaults (that is how GPU recipes set bf16, DeepSpeed, vLLM, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LoraSettings:
    """peft LoRA; ``r: 0`` (the default) trains all weights."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    merge: bool = True  # merge the adapter into the weights when training ends

    def peft_config(self):
        if self.r <= 0:
            return None
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM")


@dataclass
class TrainSettings:
    """Settings both trainers take; ``trainer_args`` passes anything else to SFTConfig / GRPOConfig."""

    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    save_steps: int = 50
    logging_steps: int = 10
    lora: LoraSettings = field(default_factory=LoraSettings)
    trainer_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None):
        d = dict(d or {})
        lora = LoraSettings(**d.pop("lora", {}) or {})
        return cls(lora=lora, **d)


def base_args(s: TrainSettings, output_dir: str | Path, seed: int) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    args: dict[str, Any] = dict(
        output_dir=str(output_dir), num_train_epochs=s.epochs, max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.lr, lr_scheduler_type="cosine", warmup_steps=s.warmup_ratio, weight_decay=s.weight_decay,
        logging_steps=s.logging_steps, save_strategy="steps", save_steps=s.save_steps, save_total_limit=2,
        report_to=[], seed=seed, data_seed=seed, dataloader_num_workers=0, disable_tqdm=False,
        bf16=bool(cuda and torch.cuda.is_bf16_supported()), gradient_checkpointing=False, use_cpu=not cuda,
    )
    args.update(s.trainer_args)
    return args


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder, to resume from after an interruption."""
    from transformers.trainer_utils import get_last_checkpoint

    d = Path(output_dir)
    return get_last_checkpoint(str(d)) if d.is_dir() else None


def train(trainer, settings: TrainSettings, output_dir: str | Path, n_examples: int):
    """Run a TRL trainer, resuming from the newest checkpoint in ``output_dir``; return the model
    (LoRA adapters merged when asked) and a record of the run (steps, last logs, resume point)."""
    resume = last_checkpoint(output_dir)
    trainer.train(resume_from_checkpoint=resume)
    model = trainer.model
    if settings.lora.r > 0 and settings.lora.merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    logs = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
    return model, {"global_step": trainer.state.global_step, "log": logs[-20:], "resumed_from": resume,
                   "examples": n_examples}
