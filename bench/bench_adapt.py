"""ICD version adaptation on the synthetic corpus: train on ICD-9, predict ICD-10 through the GEMs.

The ICD-10-CM synthetic corpus is re-coded to ICD-9-CM (policy ``closest``), a TF-IDF coder is trained
on that ICD-9 version, its test predictions are translated back to ICD-10 under each policy (``prior``
counts: ICD-10 training codes) and scored against the ICD-10 gold. Reference rows: the same coder
trained on ICD-10 directly, and the round-trip ceiling (gold ICD-10 -> ICD-9 -> ICD-10 scored as a
prediction: what the mapping alone loses). The CLI equivalent of one row::

    icdcoder data synth --out OUT/icd10
    icdcoder data recode OUT/icd10 --to 9 --policy closest --out OUT/icd9
    icdcoder train CONFIG.yaml     # data: {path: OUT/icd9}, coder: tfidf; writes predictions.jsonl
    icdcoder translate RUN/predictions.jsonl --to 10 --model RUN/model --policy prior --prior OUT/icd10 --out P
    icdcoder evaluate --gold OUT/icd10 --split test --pred P

    python bench/bench_adapt.py --out /tmp/adapt          # default corpus size (1000/250/250 notes)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TFIDF = {"word_ngrams": (1, 2), "classifier": "logreg", "C": 10.0}  # as configs/tfidf-synth.yaml
POLICIES = ("all", "first", "closest", "prior")


def corpus(out: Path, seed: int):
    """ICD-10 synthetic corpus and its ICD-9 re-coding, written once and reused."""
    from icdcoder.data.store import load_dataset, write_dataset
    from icdcoder.data.synth import SynthConfig, generate_synthetic
    from icdcoder.rules.versions import recode_dataset

    d10, d9 = out / "icd10", out / "icd9"
    if not (d10 / "manifest.json").exists():
        write_dataset(generate_synthetic(SynthConfig(seed=seed)), d10, name=f"synthetic-seed{seed}", source="synthetic")
    ds10 = load_dataset(d10)
    items, report = recode_dataset(ds10, 9, policy="closest")
    write_dataset(items, d9, name=f"{ds10.name}-icd9", source="synthetic", options={"recode": report})
    return ds10, load_dataset(d9), report


def fit(ds, folder: Path):
    from icdcoder.coders.tfidf import TfidfCoder

    coder = TfidfCoder(**TFIDF).fit(ds["train"], ds["val"])
    coder.tune_threshold(ds["val"])
    coder.save(folder)
    return coder


def score(d10: Path, preds, path: Path, threshold: float) -> dict:
    from icdcoder.evaluation import evaluate_files
    from icdcoder.prediction import write_predictions

    write_predictions(preds, path)
    return evaluate_files(d10, "test", path, threshold=threshold)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/adapt"))
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--approximate-weight", type=float, default=1.0)
    args = ap.parse_args()

    from icdcoder.evaluation import tune_thresholds
    from icdcoder.prediction import Prediction
    from icdcoder.rules.versions import GemMapper, recode_note, translate_predictions

    t0 = time.perf_counter()
    ds10, ds9, report = corpus(args.out, args.seed)
    d10 = args.out / "icd10"
    prior = dict(ds10.code_counts("train"))
    lost_9 = report["no_map"] / report["codes_in"]
    print(f"ICD-10 -> ICD-9 gold (closest): {report['codes_in']:,} labels -> {report['codes_out']:,}, "
          f"{report['distinct_before']} -> {report['distinct_after']} codes, {report['no_map']} without a map "
          f"({lost_9:.1%}), {report['approximate']:,} approximate, {report['one_to_many']:,} one-to-many, "
          f"{report['combination']} combination")

    rows = []
    c10 = fit(ds10, args.out / "model-icd10")
    m = score(d10, c10.predict(ds10["test"]), args.out / "pred-icd10-direct.jsonl", c10.threshold)
    rows.append(("TF-IDF trained on ICD-10 (direct)", m, 0.0))

    c9 = fit(ds9, args.out / "model-icd9")
    test9, val9 = c9.predict(ds9["test"]), c9.predict(ds9["val"])
    predicted9 = {(p.id, c.code) for p in test9 for c in p.codes if c.score >= c9.threshold}
    for policy in POLICIES:
        kw = {"policy": policy, "prior": prior, "approximate_weight": args.approximate_weight}
        test10 = translate_predictions(test9, c9.system_of, 10, **kw)
        lost = sum((p.id, e.codes[0]) in predicted9 for p in test10 for e in p.edits if e.action == "drop")
        lost /= max(len(predicted9), 1)
        m = score(d10, test10, args.out / f"pred-icd9-to-10-{policy}.jsonl", c9.threshold)
        rows.append((f"ICD-9 TF-IDF -> GEM {policy}", m, lost))
        thr, _ = tune_thresholds(ds10["val"], translate_predictions(val9, c9.system_of, 10, **kw))
        m = score(d10, test10, args.out / f"pred-icd9-to-10-{policy}-tuned.jsonl", thr)
        rows.append((f"ICD-9 TF-IDF -> GEM {policy}, threshold tuned on ICD-10 val", m, lost))

    for policy in POLICIES:
        back, fwd = GemMapper(policy, prior), GemMapper("closest")
        preds, n_in, n_lost = [], 0, 0
        for note in ds10["test"]:
            n9, _ = recode_note(note, 9, mapper=fwd)
            n10, _ = recode_note(n9, 10, mapper=back)
            preds.append(Prediction.from_code_set(note.id, n10.codes))
            n_in += len(note.codes)
            n_lost += len(set(note.codes) - set(n10.codes))
        m = score(d10, preds, args.out / f"roundtrip-{policy}.jsonl", 0.5)
        rows.append((f"round-trip ceiling (gold 10 -> 9 closest -> 10 {policy})", m, n_lost / n_in))

    print(f"\n{'setting':62s} {'micro F1':>9s} {'macro F1':>9s} {'micro P':>8s} {'micro R':>8s} {'lost':>7s}")
    for name, m, lost in rows:
        print(f"{name:62s} {m['micro_f1']:9.4f} {m['macro_f1']:9.4f} {m['micro_precision']:8.4f} "
              f"{m['micro_recall']:8.4f} {lost:7.1%}")
    print("\nlost: TF-IDF rows: share of the ICD-9 codes predicted at the threshold that the GEM drops; "
          "round trip: share of gold ICD-10 labels not recovered.")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
