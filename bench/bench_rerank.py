"""How the reranker's fit and predict times grow with training notes and codes, on synthetic corpora.

Each cell generates a synthetic corpus (``--codes`` concepts, ``--notes`` training notes, 250 test notes),
fits ``rerank`` with configs/rerank-synth.yaml's settings (5-fold cross-fitting), and times:

* fit (seconds; once per cell: it is minutes, and the cells themselves show the growth);
* predict on the test notes, alternating ``n_jobs=1`` and ``n_jobs=2`` (forked feature workers) and
  the two sources it is built on (``matcher``, ``tfidf``, as fitted inside it), ``--repeat`` rounds
  each: the median notes/s of each, and rerank's ratio to the matcher;
* peak RSS of the process so far (ru_maxrss).

Wall-clock on this machine as it is; the load average is printed with each cell.

    python bench/bench_rerank.py                      # notes 250/500/1000 at 300 codes; codes 600 at 500 notes
    python bench/bench_rerank.py --cells 500x300 --repeat 5
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("ICDCODER_PROGRESS", "off")


def _corpus(n_train: int, n_codes: int, seed: int):
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, note in generate_synthetic(SynthConfig(seed=seed, n_train=n_train, n_val=250, n_test=250,
                                                      n_codes=n_codes)):
        splits[split].append(note)
    return splits


def _rate(fn, notes) -> float:
    start = time.perf_counter()
    fn(notes)
    return len(notes) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=["250x300", "500x300", "1000x300", "500x600"],
                    help="NOTESxCODES: training notes and synthetic codes")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()

    from icdcoder.coders.rerank import RerankCoder

    params = {"matcher": {"label_space": "ontology", "mine": True, "calibrate": True},
              "tfidf": {"word_ngrams": [1, 2], "classifier": "svm", "C": 1.0}, "assertion": True, "folds": 5}
    rows = []
    for cell in args.cells:
        n_train, n_codes = (int(x) for x in cell.split("x"))
        data = _corpus(n_train, n_codes, args.seed)
        train_codes = len({c for n in data["train"] for c in n.codes})
        start = time.perf_counter()
        coder = RerankCoder(**params).fit(data["train"], data["val"])
        fit = time.perf_counter() - start
        test = data["test"]
        src = coder.sources
        rates: dict[str, list[float]] = {"rerank n_jobs=1": [], "rerank n_jobs=2": [], "matcher": [], "tfidf": []}
        coder.predict(test[:20])  # warm: assertion pipeline, ontology index
        for _ in range(args.repeat):  # alternate the systems, so load changes hit each alike
            coder.params["n_jobs"] = 1
            rates["rerank n_jobs=1"].append(_rate(coder.predict, test))
            coder.params["n_jobs"] = 2
            rates["rerank n_jobs=2"].append(_rate(coder.predict, test))
            rates["matcher"].append(_rate(src.matcher.predict, test))
            rates["tfidf"].append(_rate(src.tfidf.predict, test))
        med = {k: statistics.median(v) for k, v in rates.items()}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append((cell, train_codes, fit, med, rss, os.getloadavg()[0]))
        print(f"{cell}: {train_codes} training codes, fit {fit:.0f} s, "
              + ", ".join(f"{k} {v:.0f} notes/s" for k, v in med.items())
              + f", peak RSS {rss:.0f} MiB, load {os.getloadavg()[0]:.1f}", flush=True)
    print()
    print("| notes x codes | training codes | fit (s) | rerank notes/s (1 proc) | rerank notes/s (2 procs) "
          "| matcher notes/s | tfidf notes/s | rerank/matcher | peak RSS (MiB) | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cell, codes, fit, med, rss, load in rows:
        print(f"| {cell} | {codes} | {fit:.0f} | {med['rerank n_jobs=1']:.0f} | {med['rerank n_jobs=2']:.0f} "
              f"| {med['matcher']:.0f} | {med['tfidf']:.0f} | {med['rerank n_jobs=2'] / med['matcher']:.2f} "
              f"| {rss:.0f} | {load:.1f} |")


if __name__ == "__main__":
    main()
