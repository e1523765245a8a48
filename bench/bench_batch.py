"""Batch coding at scale: `icdcoder code` in one process against `--engine ray` with 1 and 2 workers.

A synthetic corpus of --notes notes (100,000 by default, generated once into --cache) is coded with a
TF-IDF coder fitted on 2,000 other synthetic notes. Each system runs as its own `icdcoder` process, from
start-up to the last row written, in turns (--rounds). Printed: wall seconds, notes/s, the overhead of
each engine against the single process, and whether the Ray output equals the single-process output
row for row. One round of 100k notes takes about 15 minutes on 2 cores.

    python bench/bench_batch.py --notes 100000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def make_corpus(cache: Path, n: int) -> tuple[Path, Path]:
    """The notes to code (JSONL: id, text) and a TF-IDF model fitted on separate training notes."""
    from icdcoder.coders.tfidf import TfidfCoder
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    cache.mkdir(parents=True, exist_ok=True)
    notes = cache / f"notes-{n}.jsonl"
    if not notes.exists():
        tmp = notes.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for _, note in generate_synthetic(SynthConfig(n_train=n, n_val=0, n_test=0, seed=101)):
                fh.write(json.dumps({"id": note.id, "text": note.text}, ensure_ascii=False) + "\n")
        tmp.replace(notes)
    model = cache / "tfidf-model"
    if not (model / "coder.json").exists():
        splits: dict[str, list] = {"train": [], "val": []}
        for split, note in generate_synthetic(SynthConfig(n_train=2000, n_val=300, n_test=0, seed=7)):
            splits[split].append(note)
        TfidfCoder(word_ngrams=(1, 2), classifier="logreg", C=10.0, class_weight="balanced").fit(
            splits["train"], splits["val"]).save(model)
    return notes, model


def run(cmd: list[str]) -> float:
    env = {**os.environ, "ICDCODER_PROGRESS": "off", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def read_jsonl(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notes", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rows-per-shard", type=int, default=2_000)
    ap.add_argument("--cache", type=Path, default=Path("runs/bench-batch"))
    args = ap.parse_args()

    notes, model = make_corpus(args.cache, args.notes)
    icd = [sys.executable, "-m", "icdcoder.cli", "code", "--model", str(model), str(notes)]
    work = args.cache / "out"
    outputs = {"single process": work / "single.jsonl", "ray, 1 worker": work / "ray1", "ray, 2 workers": work / "ray2"}
    flags = {"single process": [], "ray, 1 worker": ["--engine", "ray", "--workers", "1"],
             "ray, 2 workers": ["--engine", "ray", "--workers", "2"]}
    times: dict[str, list[float]] = {k: [] for k in outputs}
    same: dict[str, bool] = {}
    for r in range(args.rounds):
        order = list(outputs) if r % 2 == 0 else list(reversed(outputs))  # alternate who goes first
        for name in order:
            out = outputs[name]
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
            work.mkdir(parents=True, exist_ok=True)
            shards = ["--rows-per-shard", str(args.rows_per_shard)] if flags[name] else []
            times[name].append(run(icd + flags[name] + shards + ["--out", str(out)]))
            print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
        from icdcoder.batch import iter_coded

        single = [json.loads(x) for x in read_jsonl(outputs["single process"])]
        for name in ("ray, 1 worker", "ray, 2 workers"):
            same[name] = same.get(name, True) and list(iter_coded(outputs[name])) == single
    base = statistics.median(times["single process"])
    print(f"\n{args.notes:,} synthetic notes, TF-IDF coder, {os.cpu_count()} CPUs, {args.rounds} round(s), medians")
    print(f"{'system':<16} {'seconds':>8} {'notes/s':>8} {'vs single':>10} {'same rows':>10}")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"{name:<16} {t:>8.1f} {args.notes / t:>8.1f} {t / base:>9.2f}x {str(same.get(name, '-')):>10}")


if __name__ == "__main__":
    main()
