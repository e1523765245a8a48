"""Benchmark: prepare a synthetic MIMIC-IV-sized corpus (invented words, PhysioNet layout) to Parquet.

    python bench/bench_prepare_mimic.py --n-notes 200000 [--workdir DIR] [--split stratified|file]

1. generates ``note/discharge.csv.gz``, ``hosp/diagnoses_icd.csv.gz``, ``hosp/procedures_icd.csv.gz``
   (and ``hosp/admissions.csv.gz``) with ~10k-character notes (lines of random invented words),
   ~13 ICD-10-CM + ~3 ICD-10-PCS codes per admission drawn Zipf-like from invented vocabularies
   (plus a few ICD-9 rows that the ICD-10 preset must ignore);
2. runs the full prepare (preset ``mimiciv_icd10``: min code count 10, text cleaning, with an own
   patient-level stratified split or a generated Edin-style split file) in a *subprocess*, writing
   Parquet via ``icdcoder.data.store``; that subprocess reports its wall time and peak RSS
   (``ru_maxrss``), so generation does not count in the memory figure.

Nothing real is used. ``--keep`` leaves the work folder.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))


def _vocab(rng: np.random.Generator, n: int) -> list[str]:
    lens = rng.integers(2, 11, size=n)
    return ["".join(rng.choice(LETTERS, size=k)) for k in lens]


def _icd10cm(rng: np.random.Generator, n: int) -> list[str]:
    out = set()
    while len(out) < n:
        out.add(f"{chr(65 + rng.integers(0, 26))}{rng.integers(0, 10)}{rng.integers(0, 10)}"
                + "".join(str(d) for d in rng.integers(0, 10, size=rng.integers(0, 3))))
    return sorted(out)


def _icd10pcs(rng: np.random.Generator, n: int) -> list[str]:
    alphabet = list("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ")
    out = set()
    while len(out) < n:
        out.add("0" + "".join(rng.choice(alphabet, size=6)))
    return sorted(out)


def generate(root: Path, n_notes: int, seed: int = 0, avg_chars: int = 10_000) -> dict:
    rng = np.random.default_rng(seed)
    words = _vocab(rng, 20_000)
    # a pool of invented lines (~80 chars) that notes are assembled from
    pool = []
    for _ in range(20_000):
        ws = rng.integers(0, len(words), size=rng.integers(6, 16))
        pool.append(" ".join(words[i] for i in ws) + (":" if rng.random() < 0.1 else ".") +
                    (f" {rng.integers(1, 500)} mg" if rng.random() < 0.2 else ""))
    line_len = np.mean([len(x) + 1 for x in pool])
    dx_vocab, px_vocab = _icd10cm(rng, 8000), _icd10pcs(rng, 3000)
    zipf_dx = 1.0 / np.arange(1, len(dx_vocab) + 1) ** 1.1
    zipf_dx /= zipf_dx.sum()
    zipf_px = 1.0 / np.arange(1, len(px_vocab) + 1) ** 1.1
    zipf_px /= zipf_px.sum()
    (root / "note").mkdir(parents=True, exist_ok=True)
    (root / "hosp").mkdir(parents=True, exist_ok=True)
    chars = 0
    t0 = time.perf_counter()
    with gzip.open(root / "note" / "discharge.csv.gz", "wt", encoding="utf-8", compresslevel=1, newline="") as nf, \
            gzip.open(root / "hosp" / "diagnoses_icd.csv.gz", "wt", compresslevel=1, newline="") as df, \
            gzip.open(root / "hosp" / "procedures_icd.csv.gz", "wt", compresslevel=1, newline="") as pf, \
            gzip.open(root / "hosp" / "admissions.csv.gz", "wt", compresslevel=1, newline="") as af:
        nf.write("note_id,subject_id,hadm_id,note_type,note_seq,charttime,storetime,text\n")
        df.write("subject_id,hadm_id,seq_num,icd_code,icd_version\n")
        pf.write("subject_id,hadm_id,seq_num,icd_code,icd_version\n")
        af.write("subject_id,hadm_id,admittime,dischtime\n")
        subject = 10_000_000
        for k in range(n_notes):
            if k == 0 or rng.random() < 0.45:  # ~2.2 admissions per patient
                subject += 1
            hadm = 20_000_000 + k
            n_lines = max(5, int(rng.normal(avg_chars / line_len, avg_chars / line_len / 3)))
            text = "\n".join(pool[i] for i in rng.integers(0, len(pool), size=n_lines))
            chars += len(text)
            t = f"21{rng.integers(10, 99)}-{rng.integers(1, 13):02d}-{rng.integers(1, 29):02d} 10:00:00"
            nf.write(f'{subject}-DS-1,{subject},{hadm},DS,1,{t},{t},"{text}"\n')
            af.write(f"{subject},{hadm},{t},\n")
            for seq, c in enumerate(sorted(set(rng.choice(len(dx_vocab), size=rng.integers(3, 25), p=zipf_dx))), 1):
                df.write(f"{subject},{hadm},{seq},{dx_vocab[c].replace('.', '')},10\n")
            if rng.random() < 0.1:
                df.write(f"{subject},{hadm},99,4280,9\n")
            for seq, c in enumerate(sorted(set(rng.choice(len(px_vocab), size=rng.integers(0, 7), p=zipf_px))), 1):
                pf.write(f"{subject},{hadm},{seq},{px_vocab[c]},10\n")
    return {"n_notes": n_notes, "avg_chars": chars / max(n_notes, 1), "gen_s": time.perf_counter() - t0,
            "bytes_gz": sum(p.stat().st_size for p in root.rglob("*.gz"))}


def write_split_file(root: Path, path: Path, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather

    ids = []
    with gzip.open(root / "hosp" / "admissions.csv.gz", "rt") as fh:
        next(fh)
        ids = [int(line.split(",")[1]) for line in fh]
    rng = np.random.default_rng(seed)
    split = rng.choice(["train", "val", "test"], size=len(ids), p=[0.8, 0.1, 0.1])
    feather.write_feather(pa.table({"_id": pa.array(ids, pa.int64()), "split": split.tolist()}), path)


def prepare(root: Path, out: Path, split: str, split_file: Path | None) -> None:
    """Runs in the subprocess: prints one JSON line with the timings and the peak RSS."""
    from icdcoder.data.codecheck import CodeResolver
    from icdcoder.data.mimic import prepare_mimic

    t0 = time.perf_counter()
    kw = {"split_file": split_file} if split == "file" else {"own_split": "stratified"}
    manifest = prepare_mimic(root, out, fmt="parquet", preset="mimiciv_icd10",
                             resolver=CodeResolver(check_ontology=False), **kw)
    wall = time.perf_counter() - t0
    n = sum(s["n_notes"] for s in manifest["splits"].values())
    print(json.dumps({"prepare_s": wall, "notes_written": n, "notes_per_s": n / wall,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "splits": {k: v["n_notes"] for k, v in manifest["splits"].items()},
                      "n_codes": manifest["n_codes"],
                      "out_mb": sum(p.stat().st_size for p in out.iterdir()) / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-notes", type=int, default=200_000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--split", choices=["stratified", "file"], default="stratified")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--split-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare_only:
        prepare(args.workdir / "raw", args.workdir / "prepared", args.split, args.split_file)
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_mimic_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        raw = work / "raw"
        if raw.exists():
            shutil.rmtree(raw)
        g = generate(raw, args.n_notes)
        print(f"generated {g['n_notes']} notes, {g['avg_chars']:.0f} chars on average, "
              f"{g['bytes_gz'] / 2**20:.0f} MiB gzip, in {g['gen_s']:.0f} s", flush=True)
        cmd = [sys.executable, __file__, "--prepare-only", "--workdir", str(work), "--split", args.split]
        if args.split == "file":
            sf = work / "split.feather"
            write_split_file(raw, sf)
            cmd += ["--split-file", str(sf)]
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            raise SystemExit(res.returncode)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"prepare ({args.split} split): {r['prepare_s']:.1f} s wall "
              f"(subprocess {time.perf_counter() - t0:.1f} s), {r['notes_written']} notes written, "
              f"{r['notes_per_s']:.0f} notes/s, peak RSS {r['peak_rss_mb']:.0f} MiB, "
              f"splits {r['splits']}, {r['n_codes']} codes, Parquet {r['out_mb']:.0f} MiB")
        print(json.dumps({**g, **r}))
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
