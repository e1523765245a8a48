"""icdcoder's one-vs-rest linear trainer against LibMultiLabel's ``train_1vsrest``, on the same features.

Both get the same TF-IDF matrix (icdcoder's vectoriser, built once per cell and cached) and the same
labels, and solve the same problem: an L2-loss linear SVM per code, C=1, with an intercept (LibMultiLabel
``-s 1 -c 1 -B 1``; icdcoder ``classifier="svm", C=1``), on every physical core (LibMultiLabel's
threads; ``n_jobs=-1``). Each (system, round) runs in its own process, so peak RSS is its own, and the
systems alternate (a, b, then b, a ...) so a busy machine slows both alike. Scored the same way,
two-fold over the held-out notes: one global threshold on the margins, the one that maximises micro F1
on the tuning notes, applied to the test notes, and the other way round, counts pooled; micro F1
counts gold codes never seen in training as misses; P@8 ranks every code by margin. Printed: the
median of each measure over the rounds and LibMultiLabel's time over icdcoder's.

Cells: ``codiesp`` (the prepared English CodiEsp folder: train 500 notes; its val split is halved
into even and odd notes for the two folds), ``synth10k`` (the synthetic corpus, 10,000
training notes, about 1,000 codes), ``bag20k`` and ``bag100k`` (a vectorised bag-of-words generator:
any number of codes with Zipf frequencies, each code signalled by its own words; 4,000 and 8,000
codes). For icdcoder it also times the coder's whole ``predict`` (vectorising, scores, abstaining,
top-k, evidence) on up to 2,000 test notes, in notes/s.

    pip install -c constraints.txt libmultilabel    # the reference (liblinear-multicore, no torch)
    python bench/bench_linear.py --cells codiesp synth10k --rounds 3
    python bench/bench_linear.py --cells bag20k --rounds 1 --systems icdcoder
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("ICDCODER_PROGRESS", "off")

CELLS = {  # name: (source, notes, codes, word n-grams)
    "codiesp": ("codiesp", None, None, (1, 2)),
    "synth10k": ("synth", 10_000, 1_000, (1, 2)),
    "bag20k": ("bag", 20_000, 4_000, (1, 1)),
    "bag100k": ("bag", 100_000, 8_000, (1, 1)),
    "smoke": ("bag", 600, 60, (1, 1)),  # checks the script in seconds
}
EVAL_NOTES = 1_000  # synthetic tuning and test notes each
E2E_NOTES = 2_000


# ------------------------------------------------------------------------------------------- data

def bag_notes(n: int, n_codes: int, seed: int, words: int = 200):
    """``n`` notes of ``words`` random words plus, for each of 3-8 codes drawn with Zipf frequencies,
    each of the code's 3 own words with probability 0.7 (at least one). Vectorised draws: 100,000
    notes take seconds."""
    import numpy as np

    from icdcoder.data.note import Note

    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    p = 1.0 / np.arange(1, n_codes + 1) ** 1.1
    drawn = rng.choice(n_codes, size=(n, 8), p=p / p.sum())
    k = rng.integers(3, 9, size=n)
    body = vocab[rng.integers(0, len(vocab), size=(n, words))]
    shown = rng.random((n, 8, 3)) < 0.7
    shown[:, :, 0] |= ~shown.any(axis=2)
    codes = [f"Z{j // 100:02d}.{j % 100:02d}" for j in range(n_codes)]
    out = []
    for i in range(n):
        chosen = dict.fromkeys(drawn[i, :k[i]].tolist())
        extra = [f"c{j}x{m}" for a, j in enumerate(drawn[i, :k[i]].tolist()) for m in range(3) if shown[i, a, m]]
        text = " ".join(body[i].tolist() + extra)
        out.append(Note.build(f"b{seed}-{i}", text, [(codes[j], "icd10cm") for j in chosen]))
    return out


def load_cell(name: str, codiesp: Path):
    """(train, tune, test) notes of a cell."""
    source, n, n_codes, _ = CELLS[name]
    if source == "codiesp":
        from icdcoder.data import load_dataset

        ds = load_dataset(codiesp)
        return ds["train"], ds["val"][0::2], ds["val"][1::2]
    if source == "synth":
        from icdcoder.data.synth import SynthConfig, generate_synthetic

        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        for split, note in generate_synthetic(SynthConfig(n_train=n, n_val=EVAL_NOTES, n_test=EVAL_NOTES,
                                                          n_codes=n_codes)):
            splits[split].append(note)
        return splits["train"], splits["val"], splits["test"]
    return bag_notes(n, n_codes, 0), bag_notes(EVAL_NOTES, n_codes, 1), bag_notes(EVAL_NOTES, n_codes, 2)


def prepare(name: str, cache: Path, codiesp: Path) -> None:
    """Vectorise a cell once: the matrices and labels as npz, the vectoriser as a saved tfidf coder
    (with empty weights) for the whole-predict timing, and the test notes' texts."""
    import numpy as np
    import scipy.sparse as sp

    from icdcoder.coders.tfidf import TfidfCoder

    if (cache / "done").exists():
        return
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, tune, test = load_cell(name, codiesp)
    coder = TfidfCoder(word_ngrams=CELLS[name][3], classifier="svm", C=1.0)
    X = coder._features([n.text for n in train], fit=True)
    codes = sorted({c for n in train for c in n.codes})
    index = {c: j for j, c in enumerate(codes)}

    def labels(notes):
        rows = [(i, index[c]) for i, n in enumerate(notes) for c in n.codes if c in index]
        unseen = sum(c not in index for n in notes for c in n.codes)
        Y = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), ([r for r, _ in rows], [c for _, c in rows])),
                          shape=(len(notes), len(codes)))
        return Y, unseen

    for split, notes in (("train", train), ("tune", tune), ("test", test)):
        Xs = X if split == "train" else coder._features([n.text for n in notes])
        Y, unseen = labels(notes)
        sp.save_npz(cache / f"X_{split}.npz", Xs)
        sp.save_npz(cache / f"Y_{split}.npz", Y)
        (cache / f"unseen_{split}.json").write_text(json.dumps(unseen))
    coder.codes, coder.label_systems = codes, {c: "icd10cm" for c in codes}
    coder.W, coder.b = sp.csr_matrix((len(codes), X.shape[1]), dtype=np.float32), np.zeros(len(codes), np.float32)
    coder.save(cache / "coder")
    (cache / "test_texts.json").write_text(json.dumps([n.text for n in test[:E2E_NOTES]]))
    (cache / "done").write_text(json.dumps({"notes": X.shape[0], "features": X.shape[1], "codes": len(codes),
                                            "nnz": int(X.nnz), "prepare_s": round(time.perf_counter() - t0, 1)}))


# ------------------------------------------------------------------------------------------ scoring

def best_threshold(M, Y, unseen: int) -> float:
    """The global threshold on margins that maximises micro F1 (exact: every margin is tried)."""
    import numpy as np

    m = M.ravel()
    order = np.argsort(-m, kind="stable")
    gold = np.asarray(Y.toarray(), dtype=bool).ravel()[order]
    tp = np.cumsum(gold)
    f1 = 2 * tp / (np.arange(1, len(m) + 1) + gold.sum() + unseen)
    return float(m[order[int(np.argmax(f1))]])


def counts(M, Y, unseen: int, t: float) -> tuple[int, int, int, float, int]:
    """(true positives, predicted, gold, summed P@8, notes with a gold code) at threshold ``t``."""
    import numpy as np

    G = np.asarray(Y.toarray(), dtype=bool)
    P = M >= t
    top = np.argpartition(-M, 8, axis=1)[:, :8] if M.shape[1] > 8 else np.argsort(-M, axis=1)
    has = G.any(axis=1)
    p8 = float(np.take_along_axis(G, top, axis=1)[has].sum(axis=1).sum() / 8)
    return int((P & G).sum()), int(P.sum()), int(G.sum()) + unseen, p8, int(has.sum())


def scores(M: dict, Y: dict, unseen: dict) -> tuple[dict, float]:
    """Micro F1 and P@8 over the tuning and test notes together, each half scored at the threshold tuned
    on the other (two-fold): on CodiEsp's 125 + 125 notes one half alone moved micro F1 by about 0.005
    between fits that differ only within the solver's tolerance. Also the threshold tuned on ``tune``."""
    tp = pred = gold = 0
    p8 = has = 0.0
    tuned = {a: best_threshold(M[a], Y[a], unseen[a]) for a in ("tune", "test")}
    for a, b in (("tune", "test"), ("test", "tune")):
        c = counts(M[b], Y[b], unseen[b], tuned[a])
        tp, pred, gold, p8, has = tp + c[0], pred + c[1], gold + c[2], p8 + c[3], has + c[4]
    return {"micro_f1": round(2 * tp / max(1, pred + gold), 4), "p@8": round(p8 / max(has, 1), 4)}, tuned["tune"]


# ------------------------------------------------------------------------------------------- runs

def child(system: str, cache: Path, prune: float) -> dict:
    """One system, one round: fit on the cached training matrix, score tuning and test notes."""
    import numpy as np
    import scipy.sparse as sp

    X, Y = sp.load_npz(cache / "X_train.npz").tocsr(), sp.load_npz(cache / "Y_train.npz").tocsr()
    Xs = {s: sp.load_npz(cache / f"X_{s}.npz").tocsr() for s in ("tune", "test")}
    Ys = {s: sp.load_npz(cache / f"Y_{s}.npz").tocsr() for s in ("tune", "test")}
    unseen = {s: json.loads((cache / f"unseen_{s}.json").read_text()) for s in ("tune", "test")}
    out: dict = {"system": system}
    if system == "icdcoder":
        from icdcoder.coders.linear_ovr import _liblinear, stack, train_ovr

        _liblinear()  # the binding's import (0.1 s) is outside the clock, as LibMultiLabel's import (0.9 s) is
        t0 = time.perf_counter()
        W, b = stack(list(train_ovr(X, Y, classifier="svm", C=1.0, prune=prune, n_jobs=-1)), X.shape[1])
        out["fit_s"] = time.perf_counter() - t0
        from icdcoder.coders.tfidf import scoring_matrix

        WT = scoring_matrix(W)  # as the coder scores

        def margins(Z):
            blocks = [Z[i:i + 512] @ WT for i in range(0, Z.shape[0], 512)]
            return np.vstack([m.toarray() if sp.issparse(m) else m for m in blocks]) + b
        out["weights_nnz"] = int(W.nnz)
    else:
        from libmultilabel.linear import train_1vsrest

        t0 = time.perf_counter()
        model = train_1vsrest(Y, X, options="-s 1 -c 1 -B 1", verbose=False)
        out["fit_s"] = time.perf_counter() - t0
        margins = model.predict_values
    M_tune = margins(Xs["tune"])
    t0 = time.perf_counter()
    M_test = margins(Xs["test"])
    out["predict_s"] = time.perf_counter() - t0
    measured, t = scores({"tune": M_tune, "test": M_test}, Ys, unseen)  # t: the coder's cut below
    out.update(measured)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fit and scoring
    if system == "icdcoder":  # the coder's whole predict, from text to codes with evidence
        from icdcoder.coders import Coder
        from icdcoder.data.note import Note

        coder = Coder.load(cache / "coder")
        coder.W, coder.b, coder.platt = W, b, (1.0, 0.0)
        coder.threshold = float(1 / (1 + np.exp(-t)))  # the same cut as a probability
        notes = [Note(id=f"t{i}", text=x) for i, x in enumerate(json.loads((cache / "test_texts.json").read_text()))]
        t0 = time.perf_counter()
        coder.predict(notes[:1])  # converts the weights for scoring once, as a server does at its first request
        out["coder_first_predict_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        coder.predict(notes)
        out["coder_predict_notes_per_s"] = round(len(notes) / (time.perf_counter() - t0), 1)
    out["fit_s"], out["predict_s"] = round(out["fit_s"], 2), round(out["predict_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=["codiesp", "synth10k"], choices=sorted(CELLS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--systems", nargs="+", default=["icdcoder", "libmultilabel"],
                    choices=["icdcoder", "libmultilabel"])
    ap.add_argument("--codiesp", type=Path, default=Path("runs/bench-linear/codiesp-en"),
                    help="the prepared English CodiEsp folder (icdcoder data prepare codiesp ... --lang en)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-linear"))
    ap.add_argument("--prune", type=float, default=1e-4, help="icdcoder's weight pruning (the coder's default)")
    ap.add_argument("--child", nargs=2, metavar=("SYSTEM", "CACHE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.prune)))
        return
    results = []
    for name in args.cells:
        cache = args.out / "cache" / name
        prepare(name, cache, args.codiesp)
        facts = json.loads((cache / "done").read_text())
        print(f"\n{name}: {facts}", flush=True)
        runs: dict[str, list[dict]] = {s: [] for s in args.systems}
        for r in range(args.rounds):
            for system in (args.systems if r % 2 == 0 else args.systems[::-1]):
                done = subprocess.run([sys.executable, __file__, "--child", system, str(cache), "--prune",
                                       str(args.prune)], capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{system} on {name} failed:\n{done.stderr[-3000:]}")
                run = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"  round {r + 1} {json.dumps(run)}", flush=True)
                runs[system].append(run)
        summary = {"cell": name, **facts, "rounds": args.rounds, "prune": args.prune}
        for system, rs in runs.items():
            summary[system] = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "system"}
            summary[system]["fit_s_all"] = [r["fit_s"] for r in rs]
        if len(runs) == 2:
            a, b = summary["icdcoder"], summary["libmultilabel"]
            summary["fit_ratio_libmultilabel_over_icdcoder"] = round(b["fit_s"] / a["fit_s"], 2)
            summary["predict_ratio_libmultilabel_over_icdcoder"] = round(b["predict_s"] / a["predict_s"], 2)
            summary["micro_f1_diff_icdcoder_minus_libmultilabel"] = round(a["micro_f1"] - b["micro_f1"], 4)
        print("  median: " + json.dumps(summary), flush=True)
        results.append(summary)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results-{stamp}.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'cell':10} {'system':14} {'fit s':>8} {'predict s':>9} {'RSS MB':>7} {'micro F1':>8} {'P@8':>6} "
          f"{'coder notes/s':>13}")
    for s in results:
        for system in args.systems:
            m = s[system]
            e2e = m.get("coder_predict_notes_per_s")  # icdcoder's whole predict, text to codes and evidence
            print(f"{s['cell']:10} {system:14} {m['fit_s']:8.2f} {m['predict_s']:9.3f} {m['peak_rss_mb']:7.0f} "
                  f"{m['micro_f1']:8.4f} {m['p@8']:6.4f} {e2e if e2e is not None else '-':>13}")
        if "fit_ratio_libmultilabel_over_icdcoder" in s:
            print(f"{s['cell']:10} {'ratio LML/icd':14} {s['fit_ratio_libmultilabel_over_icdcoder']:8.2f} "
                  f"{s['predict_ratio_libmultilabel_over_icdcoder']:9.2f}")


if __name__ == "__main__":
    main()
