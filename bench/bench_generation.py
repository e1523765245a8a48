"""Generation throughput of a causal LM on this machine: batched vs one note at a time.

    python bench/bench_generation.py                                # the tiny default LM
    python bench/bench_generation.py --lm smollm2-135m-instruct     # SmolLM2-135M-Instruct (named model)
    python bench/bench_generation.py --lm runs/demo/sft/model/lm    # any HF model folder or id

Without ``--lm`` it builds an untrained tiny LM on the synthetic training notes (the speed of a
forward pass does not depend on what the weights learned). ``--lm`` takes a named model
(``icdcoder models list``; prepare it first with ``icdcoder models prepare NAME``), an HF folder or
id. Prompts are the study's (:class:`PromptConfig`): instruction plus the test note cut to
``--note-tokens`` tokens of the model's tokenizer. Each setting generates exactly ``--new-tokens``
tokens per note (``min_new_tokens``), so notes/s and tokens/s are comparable across batch sizes.

Defaults depend on the LM so that each run takes a few minutes on 2 cores: the tiny LM runs 64 notes
of 480 tokens at batch sizes 1,8,32; any other LM 16 notes of 256 tokens at batch sizes 1,8,16
(SmolLM2-135M: about 2-4 minutes). Prints one table, the batched/unbatched ratio measured in this
run, and the machine's load (load average, and the CPU other processes used while it ran: the
numbers are only comparable between runs on a quiet machine).

SFT and GRPO step times (full fine-tuning vs LoRA) are in ``bench/bench_training.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class MachineLoad:
    """CPU the rest of the machine used while a block ran (from /proc/stat minus this process's own
    CPU time), and the load average at its end. ``others`` is in cores (0 = quiet, 2 = both cores busy)."""

    def __init__(self) -> None:
        self.wall = self.own = self.busy = 0.0

    @staticmethod
    def _busy_seconds() -> float | None:
        try:
            with open("/proc/stat", encoding="ascii") as fh:
                f = [int(x) for x in fh.readline().split()[1:]]
        except OSError:
            return None
        idle = f[3] + (f[4] if len(f) > 4 else 0)  # idle + iowait
        guest = sum(f[8:10]) if len(f) > 9 else 0  # already counted in user / nice
        return (sum(f) - idle - guest) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "MachineLoad":
        self._t, self._own, self._busy = time.perf_counter(), _own_cpu(), self._busy_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._t
        self.own = _own_cpu() - self._own
        end = self._busy_seconds()
        self.busy = (end - self._busy) if end is not None and self._busy is not None else float("nan")

    @property
    def others(self) -> float:
        return max(0.0, self.busy - self.own) / self.wall if self.wall else float("nan")

    @property
    def own_cores(self) -> float:
        return self.own / self.wall if self.wall else float("nan")


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def load_average() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm", help="a named model (smollm2-135m-instruct), an HF model folder (e.g. a trained "
                                 "coder's model/lm) or id; default: build a tiny LM")
    ap.add_argument("--notes", type=int, help="test notes per setting (default 64 for the tiny LM, else 16)")
    ap.add_argument("--note-tokens", type=int,
                    help="note budget of each prompt, PromptConfig.max_note_tokens (default 480 tiny, else 256)")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch-sizes", help="comma-separated; the first is the baseline (default 1,8,32 tiny, "
                                          "else 1,8,16)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tiny = args.lm is None
    notes_n = args.notes or (64 if tiny else 16)
    note_tokens = args.note_tokens or (480 if tiny else 256)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,8,32" if tiny else "1,8,16")).split(",")]

    import torch

    from icdcoder.coders.generative.backends import HFBackend, Sampling, load_causal_lm, load_tokenizer
    from icdcoder.coders.generative.prompts import PromptConfig, build_messages
    from icdcoder.coders.generative.tiny import TinyConfig, build_tiny_lm
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    torch.set_num_threads(args.threads)
    ds: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, note in generate_synthetic(SynthConfig()):
        ds[split].append(note)
    lm = args.lm
    if lm is None:
        lm = os.path.join(tempfile.mkdtemp(prefix="bench-gen-"), "tiny")
        build_tiny_lm(ds["train"], lm, TinyConfig(), log=lambda m: None)
    start = time.perf_counter()
    model, tok = load_causal_lm(lm), load_tokenizer(lm)
    load_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    notes = ds["test"][:notes_n]
    probe = HFBackend(model, tok, progress=False)
    prompts = [build_messages(n.text, PromptConfig(max_note_tokens=note_tokens), probe.token_offsets) for n in notes]
    prompt_tokens = [probe.count_tokens(probe.render(m)) for m in prompts]
    model.generation_config.min_new_tokens = args.new_tokens  # every note generates the same length

    rows = []
    with MachineLoad() as whole:
        for bs in batch_sizes:
            backend = HFBackend(model, tok, batch_size=bs, progress=False)
            backend.generate(prompts[:2], Sampling(max_new_tokens=args.new_tokens))  # warm-up
            backend.generated_tokens = 0
            with MachineLoad() as m:
                backend.generate(prompts, Sampling(max_new_tokens=args.new_tokens))
            rows.append((bs, m.wall, len(prompts) / m.wall, backend.generated_tokens / m.wall, m.others))
    name = "tiny LM" if tiny else args.lm
    print(f"{name}: {params / 1e6:.1f}M parameters (loaded in {load_s:.1f} s), {len(prompts)} notes, prompts "
          f"{min(prompt_tokens)}-{max(prompt_tokens)} tokens (mean {sum(prompt_tokens) / len(prompt_tokens):.0f}; "
          f"note cut to {note_tokens}), {args.new_tokens} new tokens each, greedy, {args.threads} threads, "
          f"{str(next(model.parameters()).dtype).removeprefix('torch.')}")
    print()
    print("| batch | seconds | notes/s | tokens/s | other processes (cores) |")
    print("|------:|--------:|--------:|---------:|------------------------:|")
    for bs, sec, nps, tps, others in rows:
        print(f"| {bs} | {sec:.2f} | {nps:.2f} | {tps:.1f} | {others:.2f} |")
    print()
    base = rows[0]
    for bs, _, nps, _, _ in rows[1:]:
        print(f"batch {bs} vs batch {base[0]}: {nps / base[2]:.1f}x notes/s")
    print(f"load average at the end: {load_average()} ({os.cpu_count()} cores); generation took "
          f"{whole.wall:.0f} s with warm-ups, this process used {whole.own_cores:.2f} cores, others "
          f"{whole.others:.2f}")


if __name__ == "__main__":
    main()
