"""Throughput and memory of the baseline coders as notes and codes grow.

Each cell (coder, notes, codes) runs in its own subprocess so its peak RSS is its own. Notes are
generated for the benchmark (random clinical-ish words plus a few words per assigned code, Zipf
code frequencies), so any number of codes can be asked for. Prints notes/s for training and
prediction, peak memory, and how time grows with notes (at fixed codes) and with codes (at fixed
notes) as ratios measured in this one run.

    python bench/bench_baselines.py                         # 1k/10k notes x 50/1,000 codes, TF-IDF
    python bench/bench_baselines.py --notes 1000 10000 100000 --codes 50 1000 8000   # the full grid (hours)
    python bench/bench_baselines.py --coders tfidf plm_icd --notes 1000 --codes 50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def make_notes(n: int, n_codes: int, seed: int, words: int = 200):
    import numpy as np

    from icdcoder.data.note import Note

    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(20_000)]
    code_words = {j: [f"c{j}x{k}" for k in range(3)] for j in range(n_codes)}
    p = 1.0 / np.arange(1, n_codes + 1) ** 1.1
    p /= p.sum()
    codes = [f"Z{j // 100:02d}.{j % 100:02d}" for j in range(n_codes)]  # well-formed ICD-10-CM shapes
    notes = []
    for i in range(n):
        k = int(rng.integers(3, 9))
        chosen = sorted(set(rng.choice(n_codes, size=k, p=p).tolist()))
        body = list(rng.choice(vocab, size=words))
        for j in chosen:
            body += code_words[j]
        rng.shuffle(body)
        notes.append(Note.build(f"b{seed}-{i}", " ".join(body), [(codes[j], "icd10cm") for j in chosen]))
    return notes


def cell(coder_name: str, n_notes: int, n_codes: int) -> dict:
    """Run in a child: generate, fit, predict; report seconds and peak RSS."""
    from icdcoder.coders import coder_class

    train = make_notes(n_notes, n_codes, seed=0)
    test = make_notes(min(n_notes, 2000), n_codes, seed=1)
    params = {"tfidf": {"word_ngrams": (1, 1), "classifier": "svm", "C": 1.0, "n_jobs": 2},
              "plm_icd": {"epochs": 1, "segment_length": 128, "max_segments": 2, "batch_size": 8}}[coder_name]
    coder = coder_class(coder_name)(**params)
    t0 = time.perf_counter()
    coder.fit(train, None)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    coder.predict(test)
    pred_s = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"coder": coder_name, "notes": n_notes, "codes": n_codes, "fit_s": round(fit_s, 2),
            "train_notes_per_s": round(n_notes / fit_s, 1), "predict_notes_per_s": round(len(test) / pred_s, 1),
            "peak_rss_mb": round(rss_mb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coders", nargs="+", default=["tfidf"])
    ap.add_argument("--notes", nargs="+", type=int, default=[1000, 10000])
    ap.add_argument("--codes", nargs="+", type=int, default=[50, 1000])
    ap.add_argument("--cell", nargs=3, metavar=("CODER", "NOTES", "CODES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        print(json.dumps(cell(args.cell[0], int(args.cell[1]), int(args.cell[2]))))
        return
    rows = []
    for coder in args.coders:
        for codes in args.codes:
            for notes in args.notes:
                r = subprocess.run([sys.executable, __file__, "--cell", coder, str(notes), str(codes)],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"{coder} {notes} notes x {codes} codes failed:\n{r.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(r.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{coder:8s} {notes:>7,} notes x {codes:>5,} codes: fit {row['fit_s']:8.1f} s "
                      f"({row['train_notes_per_s']:8.1f} notes/s), predict {row['predict_notes_per_s']:8.1f} notes/s, "
                      f"peak {row['peak_rss_mb']:,} MB", flush=True)
    print("\ngrowth of fit time (ratios measured in this run):")
    by = {(r["coder"], r["notes"], r["codes"]): r["fit_s"] for r in rows}
    for (coder, n, c), s in sorted(by.items()):
        for n2 in args.notes:
            if n2 > n and (coder, n2, c) in by:
                print(f"  {coder}: notes x{n2 / n:g} at {c:,} codes -> time x{by[(coder, n2, c)] / s:.2f}")
                break
        for c2 in args.codes:
            if c2 > c and (coder, n, c2) in by:
                print(f"  {coder}: codes x{c2 / c:g} at {n:,} notes -> time x{by[(coder, n, c2)] / s:.2f}")
                break


if __name__ == "__main__":
    main()
