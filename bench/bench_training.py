"""SFT and GRPO step times of a causal LM on this machine, through the project's own coders.

    python bench/bench_training.py              # SmolLM2-135M-Instruct: SFT full, LoRA, top8, top8-uncompacted;
                                                # GRPO LoRA, full, top8
    python bench/bench_training.py --rounds 2   # the SFT runs twice, the second time in reverse order
    python bench/bench_training.py --sft full,top8 --grpo top8

Each run fits an ``llm_sft`` coder (or, for GRPO, an ``llm_grpo`` coder with ``init_from`` the SFT coder
the last SFT run saved, so only its GRPO stage runs) on synthetic training notes, with the study's
prompts (:class:`PromptConfig`, the note cut to ``--note-tokens`` tokens). The settings are the
coders' own ``sft`` / ``grpo`` parameters (:class:`TrainSettings`, :class:`GRPOSettings`), printed with
the table. A step is timed from the end of the previous one (the first from the trainer's start), so
it includes fetching the batch; the first ``--warmup`` steps are not counted. Tokens are TRL's
``num_tokens`` log (non-padding tokens the model processed: prompt and answer for SFT, where the loss
is on the answer only; prompt and completions for GRPO). For GRPO, "rollout" is the time spent in
``GRPOTrainer._generate_and_score_completions`` (sampling the completions and scoring them); the rest
of a step is the policy update.

Modes: ``full`` (every weight), ``lora`` (LoRA r 16 on every linear layer), ``top8`` (``train_layers: 8``:
only the last 8 decoder layers and the final norm train, the rest is frozen so backpropagation stops
there), and ``top8-uncompacted`` (the same, with TRL's fused LM head scoring every position on CPU as it
does without Triton: what :func:`icdcoder.training.trl_common.compact_lm_head_on_cpu` saves). With
``--rounds 2`` the SFT runs repeat in the reverse order, so a change of machine load hits all of them.
Other processes' CPU use is measured for every run (from
/proc/stat): on a busy machine the numbers are not comparable between runs.

Generation throughput (batched vs one note at a time) is ``bench/bench_generation.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generation import MachineLoad, load_average  # noqa: E402

_TIMER = None  # the StepTimer of the run in progress


def _timer_class():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start = None
            self.ends: list[float] = []
            self.logs: dict[int, dict] = {}
            self.rollouts: list[float] = []
            self.trainable = self.total = 0
            self.optim = "?"

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.start = time.perf_counter()
            self.optim = str(getattr(args.optim, "value", args.optim))
            if model is not None:
                self.total = sum(p.numel() for p in model.parameters())
                self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.setdefault(state.global_step, {}).update(logs or {})

    return StepTimer


def _instrument() -> None:
    """Attach the current run's StepTimer to the trainer the project's ``train`` is handed (bench only)."""
    from icdcoder.training import trl_common

    original = trl_common._install_progress

    def install(trainer, desc):
        cb = original(trainer, desc)
        if _TIMER is not None:
            trainer.add_callback(_TIMER)
            rollout = getattr(trainer, "_generate_and_score_completions", None)
            if rollout is not None:  # GRPO: time the sampling + scoring part of each step
                timer = _TIMER

                def timed(*a, **kw):
                    t = time.perf_counter()
                    try:
                        return rollout(*a, **kw)
                    finally:
                        timer.rollouts.append(time.perf_counter() - t)

                trainer._generate_and_score_completions = timed
        return cb

    trl_common._install_progress = install


@contextlib.contextmanager
def _uncompacted(on: bool):
    """While ``on``: TRL's fused LM head as TRL runs it on CPU (every position scored)."""
    from icdcoder.training import trl_common

    original = trl_common.compact_lm_head_on_cpu
    if on:
        trl_common.compact_lm_head_on_cpu = contextlib.nullcontext
    try:
        yield
    finally:
        trl_common.compact_lm_head_on_cpu = original


def _run(kind: str, label: str, params: dict, notes, warmup: int, work: Path, save_to: Path | None = None) -> dict:
    global _TIMER
    from icdcoder.coders.base import coder_class

    _TIMER = timer = _timer_class()()
    coder = coder_class(kind)(checkpoint_dir=str(work / label), **params)
    print(f"[bench] {label}: fitting {kind} on {len(notes)} notes (load average {load_average()})",
          file=sys.stderr, flush=True)
    with MachineLoad() as m:
        coder.fit(notes)
    _TIMER = None
    stage = coder.history[-1]
    steps = [e - s for s, e in zip([timer.start] + timer.ends[:-1], timer.ends)]
    cum = [timer.logs.get(i + 1, {}).get("num_tokens") for i in range(len(steps))]
    tokens = [(c - p) if c is not None and p is not None else None for p, c in zip([0] + cum[:-1], cum)]
    timed, timed_tokens = steps[warmup:], tokens[warmup:]
    row = {"run": label, "trainable": timer.trainable, "total": timer.total, "steps": steps, "warmup": steps[:warmup],
           "timed": timed, "tokens": timed_tokens, "stage_s": stage.get("seconds"), "others": m.others,
           "own": m.own_cores, "load": load_average(), "optim": timer.optim,
           "rollout": timer.rollouts[warmup:] if timer.rollouts else None,
           "completion_len": [timer.logs.get(i + 1, {}).get("completions/mean_length")
                              for i in range(warmup, len(steps))]}
    if save_to is not None:
        coder.save(save_to)
    shutil.rmtree(work / label, ignore_errors=True)
    print(f"[bench] {label}: steps {', '.join(f'{s:.1f}' for s in steps)} s", file=sys.stderr, flush=True)
    return row


def _fmt_row(r: dict, grpo: bool) -> str:
    t = r["timed"]
    mean = statistics.mean(t) if t else float("nan")
    toks = [x for x in r["tokens"] if x is not None]
    tok_step = statistics.mean(toks) if toks else float("nan")
    tps = sum(toks) / sum(t) if toks and len(toks) == len(t) else float("nan")
    trainable = f"{r['trainable'] / 1e6:.2f}M" if r["trainable"] else "?"
    cells = [r["run"], trainable, f"{len(t)} (+{len(r['warmup'])})", f"{mean:.1f}",
             f"{min(t):.1f}-{max(t):.1f}" if t else "-", f"{tok_step:.0f}", f"{tps:.0f}"]
    if grpo:
        roll = r["rollout"] or []
        lens = [x for x in r["completion_len"] if x is not None]
        cells += [f"{statistics.mean(roll):.1f}" if roll else "?", f"{statistics.mean(lens):.1f}" if lens else "?"]
    cells += [", ".join(f"{s:.1f}" for s in r["warmup"]) or "-", f"{r['stage_s']:.0f}" if r["stage_s"] else "?",
              f"{r['others']:.2f}", r["load"]]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm", default="smollm2-135m-instruct", help="named model, HF folder or id")
    ap.add_argument("--note-tokens", type=int, default=256, help="PromptConfig.max_note_tokens")
    ap.add_argument("--batch-size", type=int, default=4, help="SFT examples per step")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run, after the warm-up")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the SFT runs (alternating order)")
    ap.add_argument("--sft", default="full,lora,top8,top8-uncompacted", help="SFT runs: comma-separated modes")
    ap.add_argument("--grpo", default="lora,full,top8", help="GRPO runs: comma-separated modes ('' for none)")
    ap.add_argument("--grpo-prompts", type=int, default=1, help="GRPO prompts per step")
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from icdcoder.data.synth import SynthConfig, generate_synthetic

    torch.set_num_threads(args.threads)
    _instrument()
    wall0 = time.perf_counter()
    train = [n for split, n in generate_synthetic(SynthConfig()) if split == "train"]
    steps = args.warmup + args.steps
    prompt = {"max_note_tokens": args.note_tokens}
    common = dict(max_steps=steps, logging_steps=1, save_steps=10_000, lr=1e-5)
    lora = {"r": args.lora_r, "alpha": args.lora_alpha, "target_modules": "all-linear"}
    sft_modes = {"full": {"lora": {"r": 0}}, "lora": {"lora": lora}, "top8": {"train_layers": 8},
                 "top8-uncompacted": {"train_layers": 8}}
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    sft_notes = train[: args.batch_size * steps]
    rows_sft, rows_grpo = [], []
    sft_coder = work / "sft-coder"
    try:
        order = [m.strip() for m in args.sft.split(",") if m.strip()]
        for rnd in range(args.rounds):
            for mode in order if rnd % 2 == 0 else order[::-1]:
                last = rnd == args.rounds - 1 and mode == (order if rnd % 2 == 0 else order[::-1])[-1]
                sft = {**common, "batch_size": args.batch_size, **sft_modes[mode]}
                with _uncompacted(mode.endswith("uncompacted")):
                    rows_sft.append(_run("llm_sft", f"sft {mode}" + (f" #{rnd + 1}" if args.rounds > 1 else ""),
                                         {"model": args.lm, "prompt": prompt, "sft": sft}, sft_notes, args.warmup,
                                         work, save_to=sft_coder if last and args.grpo else None))
        grpo_modes = [g.strip() for g in args.grpo.split(",") if g.strip()]
        batch = args.grpo_prompts * args.num_generations
        grpo_notes = train[len(sft_notes): len(sft_notes) + args.grpo_prompts * steps]
        for mode in grpo_modes:
            grpo = {**common, "batch_size": batch, "num_generations": args.num_generations,
                    "max_completion_length": args.max_completion_length, "temperature": 1.0, "beta": 0.0,
                    "rewards": {"f1": 1.0}, **sft_modes[mode]}
            with _uncompacted(mode.endswith("uncompacted")):
                rows_grpo.append(_run("llm_grpo", f"grpo {mode}", {"model": args.lm, "init_from": str(sft_coder),
                                                                   "prompt": prompt, "grpo": grpo},
                                      grpo_notes, args.warmup, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - wall0

    print(f"# Training step times: {args.lm}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
          f"float32 on CPU, torch {torch.__version__}")
    print()
    print(f"SFT (llm_sft coder): prompts = instruction + synthetic training note cut to {args.note_tokens} tokens, "
          f"completion = the gold answer; batch_size {args.batch_size}, grad_accum 1, max_length 2048, "
          f"completion_only_loss, optimizer {rows_sft[0]['optim'] if rows_sft else '?'} lr 1e-5 cosine, {args.warmup} warm-up + {args.steps} timed steps per run; "
          f"full = all weights (lora.r 0), LoRA = r {args.lora_r}, alpha {args.lora_alpha}, dropout 0.05, "
          f"target_modules all-linear (merged after training, not timed); top8 = train_layers 8 (the last 8 decoder "
          f"layers and the final norm); -uncompacted = TRL's fused LM head over every position (TRL's CPU default).")
    print()
    head = ("| run | trainable params | steps timed (+warm-up) | s/step | min-max | tokens/step | tokens/s | "
            "warm-up s | stage s | other procs (cores) | load avg after |")
    print(head)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows_sft:
        print(_fmt_row(r, grpo=False))
    if rows_grpo:
        print()
        print(f"GRPO (llm_grpo coder, init_from the last SFT run's coder): {args.grpo_prompts} prompt(s) per step x "
              f"num_generations {args.num_generations} = batch_size {batch} completions, max_completion_length "
              f"{args.max_completion_length}, temperature 1.0, beta 0 (no reference model), reward f1, "
              f"{args.warmup} warm-up + {args.steps} timed steps; LoRA as above. tokens = prompt + completion tokens; "
              f"rollout = sampling + scoring, the rest of a step is the update.")
        print()
        print("| run | trainable params | steps timed (+warm-up) | s/step | min-max | tokens/step | tokens/s | "
              "rollout s/step | completion tokens (mean) | warm-up s | stage s | other procs (cores) | "
              "load avg after |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in rows_grpo:
            print(_fmt_row(r, grpo=True))
    print()
    print(f"stage s = the coder's whole stage (trainer set-up, dataset preparation, all steps, LoRA merge, "
          f"saving the model). Total wall time {wall / 60:.1f} min; load average at the end {load_average()}.")


if __name__ == "__main__":
    main()
