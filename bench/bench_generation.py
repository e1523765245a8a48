"""Generation throughput of the tiny default LM on this machine: batched vs one note at a time.

    python bench/bench_generation.py [--lm runs/demo/sft/model/lm] [--notes 64] [--new-tokens 48]

Without ``--lm`` it builds an untrained tiny LM on the synthetic training notes (the speed of a
forward pass does not depend on what the weights learned). Prompts are the study's: instruction plus
the note cut to 480 tokens. Each setting generates exactly ``--new-tokens`` tokens per note
(``min_new_tokens``), so notes/s and tokens/s are comparable across batch sizes. Prints one table
and the batched/unbatched ratio measured in this run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lm", help="an HF model folder (e.g. a trained coder's model/lm); default: build a tiny LM")
    ap.add_argument("--notes", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from icdcoder.coders.generative.backends import HFBackend, load_causal_lm, load_tokenizer
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
    model, tok = load_causal_lm(lm), load_tokenizer(lm)
    params = sum(p.numel() for p in model.parameters())
    notes = ds["test"][: args.notes]
    offsets = HFBackend(model, tok, progress=False).token_offsets
    prompts = [build_messages(n.text, PromptConfig(max_note_tokens=480), offsets) for n in notes]
    model.generation_config.min_new_tokens = args.new_tokens  # every note generates the same length

    from icdcoder.coders.generative.backends import Sampling

    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        backend = HFBackend(model, tok, batch_size=bs, progress=False)
        backend.generate(prompts[:2], Sampling(max_new_tokens=args.new_tokens))  # warm-up
        backend.generated_tokens = 0
        start = time.perf_counter()
        backend.generate(prompts, Sampling(max_new_tokens=args.new_tokens))
        sec = time.perf_counter() - start
        rows.append((bs, sec, len(prompts) / sec, backend.generated_tokens / sec))
    print(f"tiny LM {params / 1e6:.2f}M parameters, {len(prompts)} notes, {args.new_tokens} new tokens each, "
          f"{args.threads} threads")
    print(f"{'batch':>6} {'seconds':>8} {'notes/s':>8} {'tokens/s':>9}")
    for bs, sec, nps, tps in rows:
        print(f"{bs:>6} {sec:>8.2f} {nps:>8.2f} {tps:>9.1f}")
    base = rows[0]
    for bs, _, nps, _ in rows[1:]:
        print(f"batch {bs} vs batch {base[0]}: {nps / base[2]:.1f}x notes/s")


if __name__ == "__main__":
    main()
