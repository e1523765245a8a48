"""What SFT and GRPO share: device-aware trainer defaults, LoRA config, checkpoint resume, progress.

TRL's defaults are GPU defaults (bf16, gradient checkpointing); on CPU they make a tiny run ~13x
slower, so without CUDA both are switched off and ``use_cpu`` is set. Anything in a config's
``trainer_args`` overrides these defaults (that is how GPU recipes set bf16, DeepSpeed, vLLM, ...).

Progress: transformers' own tqdm bar is off (``disable_tqdm``); a :class:`transformers.TrainerCallback`
reports step/max_steps, the logged loss (and GRPO's reward) through :mod:`icdcoder.progress` instead:
a rich bar on a terminal, a plain line every ``ICDCODER_PROGRESS_INTERVAL`` seconds otherwise.
"""

from __future__ import annotations

import contextlib
import functools
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
    train_layers: int = 0  # > 0: train only the last N decoder layers (and the final norm); 0: all weights
    keep_checkpoints: bool = False  # False: a finished stage deletes its checkpoint-N folders (weights + optimizer)
    lora: LoraSettings = field(default_factory=LoraSettings)
    trainer_args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None):
        d = dict(d or {})
        lora = LoraSettings(**d.pop("lora", {}) or {})
        return cls(lora=lora, **d)


def decoder_layers(model):
    """The stack of decoder blocks of a causal LM: the ``ModuleList`` holding ``num_hidden_layers`` blocks."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(model).__name__}")


def freeze_lower_layers(model, n: int) -> dict[str, int]:
    """Train only the last ``n`` decoder layers and the final norm; embeddings, the lower layers and the
    output head are frozen.

    Why: backpropagation then stops at the first trainable layer, and the optimizer keeps state for a
    a fraction of the weights. On 2 CPU cores an SFT step of SmolLM2-135M is 1.9x faster with ``n = 8`` of
    its 30 layers than with every weight (``bench/bench_training.py``). The frozen lower layers keep the pretrained
    reading of the note; the upper ones learn the answer. Returns the trainable and total parameter counts."""
    layers = decoder_layers(model)
    if not 0 < n <= len(layers):
        raise ValueError(f"train_layers must be between 1 and the model's {len(layers)} layers, not {n}")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[-n:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    norm = getattr(decoder, "norm", None)
    if norm is not None:
        for p in norm.parameters():
            p.requires_grad_(True)
    return {"trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "parameters": sum(p.numel() for p in model.parameters())}


def prepare_weights(model, s: TrainSettings) -> dict[str, int]:
    """Apply ``train_layers`` (full fine-tuning of the top layers); LoRA is applied by the trainer."""
    if s.train_layers <= 0:
        for p in model.parameters():  # a model frozen by an earlier stage in this process trains fully again
            p.requires_grad_(True)
        return {}
    if s.lora.r > 0:
        raise ValueError("train_layers is for full fine-tuning of the top layers; with LoRA (lora.r > 0) leave it 0")
    return freeze_lower_layers(model, s.train_layers)


def base_args(s: TrainSettings, output_dir: str | Path, seed: int) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    args: dict[str, Any] = dict(
        output_dir=str(output_dir), num_train_epochs=s.epochs, max_steps=s.max_steps,
        per_device_train_batch_size=s.batch_size, gradient_accumulation_steps=s.grad_accum,
        learning_rate=s.lr, lr_scheduler_type="cosine", warmup_steps=s.warmup_ratio, weight_decay=s.weight_decay,
        logging_steps=s.logging_steps, save_strategy="steps", save_steps=s.save_steps, save_total_limit=2,
        report_to=[], seed=seed, data_seed=seed, dataloader_num_workers=0, disable_tqdm=True,  # ours instead
        bf16=bool(cuda and torch.cuda.is_bf16_supported()), gradient_checkpointing=False, use_cpu=not cuda,
    )
    args.update(s.trainer_args)
    return args


def prune_checkpoints(stage_dir: str | Path) -> int:
    """Delete the ``checkpoint-N`` folders under a finished stage's folder and return how many.

    They exist to resume an interrupted run; once the stage's final model is written they are dead weight
    (a full checkpoint is the weights plus twice their size in AdamW state: 1.5 GB for SmolLM2-135M)."""
    import shutil

    found = [d for d in Path(stage_dir).rglob("checkpoint-*") if d.is_dir() and d.name.split("-", 1)[1].isdigit()]
    for d in found:
        shutil.rmtree(d)
    return len(found)


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` folder, to resume from after an interruption."""
    from transformers.trainer_utils import get_last_checkpoint

    d = Path(output_dir)
    return get_last_checkpoint(str(d)) if d.is_dir() else None


METRICS = ("loss", "reward")  # what the progress line shows from the logs TRL emits


@functools.cache
def _callback_class():
    from transformers import TrainerCallback

    from icdcoder.progress import Progress

    class TrainingProgress(TrainerCallback):
        """Step/max_steps with the latest logged loss (and GRPO reward) through :mod:`icdcoder.progress`.
        ``bar=False`` keeps the plain lines but draws no bar on a terminal (transformers draws its own)."""

        def __init__(self, desc: str, **kw: Any):
            self.desc, self.kw = desc, kw
            self.progress: Progress | None = None
            self._due = False

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and self.progress is None:
                self.progress = Progress(self.desc, state.max_steps if state.max_steps > 0 else None,
                                         unit="step", initial=state.global_step, **self.kw).start()

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is None:
                return
            if control.should_log:  # on_log follows with this step's loss: one line, with it
                self._due = True
            else:
                self.progress.update(completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is None:
                return
            metrics = {k: float(logs[k]) for k in METRICS
                       if isinstance((logs or {}).get(k), (int, float)) and not isinstance(logs[k], bool)}
            if metrics or self._due:
                self._due = False
                self.progress.update(completed=state.global_step, **metrics)

        def on_train_end(self, args, state, control, **kwargs):
            self.close()

        def close(self, failed: bool = False) -> None:
            if self.progress is not None:
                self.progress.close(failed=failed)
                self.progress = None

    return TrainingProgress


def progress_callback(desc: str, **kw: Any):
    """A ``transformers.TrainerCallback`` reporting training progress as ``desc`` (keywords go to
    :class:`icdcoder.progress.Progress`: ``stream``, ``interval``, ``clock``, ``bar``, ``enabled``)."""
    return _callback_class()(desc, **kw)


def _install_progress(trainer, desc: str):
    """Replace transformers' bar / log printer with our callback (one progress display, not two)."""
    from transformers.trainer_callback import PrinterCallback

    ours = bool(trainer.args.disable_tqdm)
    if ours:
        trainer.remove_callback(PrinterCallback)  # a dict per logging step on stdout; the line has the loss
    cb = progress_callback(desc, bar=ours)  # with transformers' own bar kept: plain lines only off a terminal
    trainer.add_callback(cb)
    return cb


@contextlib.contextmanager
def compact_lm_head_on_cpu():
    """Score only the answer tokens in TRL's fused LM head on CPU as well.

    TRL (1.16) projects through the output layer only the positions that carry a label when Triton is
    available, and every position otherwise (so that Neuron devices see fixed tile shapes). With
    prompt-completion data most positions are prompt, so on CPU that is several times the projection work;
    compacting made an SFT step of SmolLM2 1.3x faster (``bench/bench_training.py``). CPU has no recompilation to avoid, so
    while a trainer runs, ``trl.trainer.utils`` is told to compact on CPU too; the loss and gradients are
    the same. Nothing changes when TRL lays its code out differently (the hook is then absent)."""
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def train(trainer, settings: TrainSettings, output_dir: str | Path, n_examples: int, *, desc: str | None = None):
    """Run a TRL trainer, resuming from the newest checkpoint in ``output_dir``; return the model
    (LoRA adapters merged when asked) and a record of the run (steps, last logs, resume point).
    Progress is reported as ``desc`` (default: the trainer's kind, e.g. ``sft train``)."""
    kind = type(trainer).__name__.removesuffix("Trainer").lower() or "trl"
    cb = _install_progress(trainer, desc or f"{kind} train")
    resume = last_checkpoint(output_dir)
    try:
        with compact_lm_head_on_cpu():
            trainer.train(resume_from_checkpoint=resume)
    except BaseException:
        cb.close(failed=True)
        raise
    finally:
        trainer.remove_callback(cb)
    cb.close()
    model = trainer.model
    if settings.lora.r > 0 and settings.lora.merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    logs = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
    for p in model.parameters():  # frozen layers (train_layers) are frozen for this run only
        p.requires_grad_(True)
    return model, {"global_step": trainer.state.global_step, "log": logs[-20:], "resumed_from": resume,
                   "examples": n_examples, "processes": trainer.args.world_size}
