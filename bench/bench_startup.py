"""Start-up time: the ontology index build, cold commands, warm calls and ``import icdcoder``.

(a) builds the ontology index from scratch in a fresh ``ICDCODER_CACHE`` (one subprocess);
(b) runs ``icdcoder ontology lookup I10`` and ``icdcoder code --model M note.txt`` (rules on) as fresh
    processes against that index, alternating, ``--repeat`` times each: median and min;
(c) inside one process, after a first call: the same lookup (with its GEM rows, as the command prints
    them), lookups of codes not asked before (index queries), and coding one note;
(d) ``python -c "import icdcoder"`` and ``python -c "import icdcoder.cli"``.

Without --model a TF-IDF coder (configs/tfidf-synth.yaml's settings) is fitted on the synthetic corpus
first; the note coded is its first test note. Every figure is wall-clock on this machine as it is:
other work on the CPUs shows up in the numbers (the load average is printed).

    python bench/bench_startup.py
    python bench/bench_startup.py --model runs/tfidf-synth/model --repeat 9
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

WARM = r"""
import json, statistics, sys, time
from icdcoder.ontology import Ontology, get_ontology
from icdcoder.pipeline import CodingPipeline

def lookup_i10(ont):
    info = ont.lookup("I10")
    return info, ont.map_10_to_9(info.code, info.system)

out = {}
t = time.perf_counter(); ont = get_ontology(); lookup_i10(ont); out["first_lookup"] = time.perf_counter() - t
reps = []
for _ in range(200):
    t = time.perf_counter(); lookup_i10(ont); reps.append(time.perf_counter() - t)
out["lookup"] = reps
codes = ont.codes("icd10cm")[::97] + ont.codes("icd10pcs")[::97] + ont.codes("icd9cm")[::23]
fresh = Ontology(); fresh.lookup("I10")
t = time.perf_counter()
for c in codes:
    fresh.lookup(c)
out["uncached_lookup"] = (time.perf_counter() - t) / len(codes)
t = time.perf_counter(); pipe = CodingPipeline.from_dir(sys.argv[1], top_k=None); out["model_load"] = time.perf_counter() - t
note = open(sys.argv[2], encoding="utf-8").read()
t = time.perf_counter(); pipe.code_text(note); out["first_code"] = time.perf_counter() - t
reps = []
for _ in range(30):
    t = time.perf_counter(); pipe.code_text(note); reps.append(time.perf_counter() - t)
out["code"] = reps
print(json.dumps(out))
"""


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return elapsed


def icdcoder_cmd() -> list[str]:
    script = Path(sys.executable).with_name("icdcoder")
    return [str(script)] if script.exists() else [sys.executable, "-m", "icdcoder.cli"]


def train_model(folder: Path) -> tuple[Path, str]:
    """Fit configs/tfidf-synth.yaml's coder on the synthetic corpus; return it and the first test note."""
    from icdcoder.coders.tfidf import TfidfCoder
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for split, note in generate_synthetic(SynthConfig(seed=13)):
        splits[split].append(note)
    t0 = time.perf_counter()
    coder = TfidfCoder(word_ngrams=(1, 2), classifier="logreg", C=10.0).fit(splits["train"], splits["val"])
    print(f"trained TF-IDF on {len(splits['train']):,} synthetic notes in {time.perf_counter() - t0:.1f} s", flush=True)
    return coder.save(folder / "model"), splits["test"][0].text


def synthetic_note() -> str:
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    return next(note.text for split, note in generate_synthetic(SynthConfig(seed=13)) if split == "test")


def row(what: str, values: list[float] | float | None, unit: str = "s") -> None:
    if values is None:
        print(f"  {what:<46} {'-':>9}")
        return
    vals = values if isinstance(values, list) else [values]
    scale, fmt = (1000.0, "{:8.2f} ms") if unit == "ms" else (1.0, "{:8.2f} s ")
    med, low = statistics.median(vals) * scale, min(vals) * scale
    print(f"  {what:<46} {fmt.format(med)}" + (f" {fmt.format(low)}" if len(vals) > 1 else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a saved coder folder; default: fit TF-IDF on the synthetic corpus")
    ap.add_argument("--note", type=Path, help="the note to code; default: the synthetic corpus' first test note")
    ap.add_argument("--repeat", type=int, default=5, help="cold runs of each command")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp_name:
        tmp = Path(tmp_name)
        env = {**os.environ, "ICDCODER_CACHE": str(tmp / "cache")}

        # (a) the index, from scratch
        build = timed([sys.executable, "-c", "from icdcoder.ontology import get_ontology; "
                       "get_ontology().index.ensure()"], env)
        index_files = list((tmp / "cache" / "ontology").glob("*.sqlite"))
        size_mb = index_files[0].stat().st_size / 2**20 if index_files else 0.0
        os.environ["ICDCODER_CACHE"] = env["ICDCODER_CACHE"]  # training below uses the index just built

        if args.model:
            model = args.model
            text = args.note.read_text(encoding="utf-8") if args.note else synthetic_note()
        else:
            model, text = train_model(tmp)
            if args.note:
                text = args.note.read_text(encoding="utf-8")
        note = tmp / "note.txt"
        note.write_text(text, encoding="utf-8")

        # (b) cold processes, alternating
        cli = icdcoder_cmd()
        lookup_cmd = [*cli, "ontology", "lookup", "I10"]
        code_cmd = [*cli, "code", "--model", str(model), str(note)]
        timed(lookup_cmd, env)  # once untimed: the OS file cache holds the index and the packages' files
        cold_lookup, cold_code = [], []
        for _ in range(args.repeat):
            cold_lookup.append(timed(lookup_cmd, env))
            cold_code.append(timed(code_cmd, env))

        # (c) warm, in one process
        r = subprocess.run([sys.executable, "-c", WARM, str(model), str(note)], env=env, capture_output=True,
                           text=True)
        if r.returncode != 0:
            sys.exit(f"the warm run failed:\n{r.stderr[-3000:]}")
        warm = json.loads(r.stdout.strip().splitlines()[-1])

        # (d) imports
        imp = [timed([sys.executable, "-c", "import icdcoder"], env) for _ in range(args.repeat)]
        imp_cli = [timed([sys.executable, "-c", "import icdcoder.cli"], env) for _ in range(args.repeat)]
        nothing = [timed([sys.executable, "-c", "pass"], env) for _ in range(args.repeat)]

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"{os.cpu_count()} CPUs" + (f", load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else "")
          + f", python {sys.version.split()[0]}")
    print(f"  {'':<46} {'median':>11} {'min':>11}")
    print("(a) index")
    row(f"build from scratch ({size_mb:.0f} MiB)", build)
    print(f"(b) cold process, {args.repeat} runs each")
    row("icdcoder ontology lookup I10", cold_lookup)
    row("icdcoder code --model M note.txt (rules on)", cold_code)
    print("(c) warm, one process")
    row("first lookup I10 + GEM (opens the index)", warm["first_lookup"], "ms")
    row("lookup I10 + GEM again (cached)", warm["lookup"], "ms")
    row("lookup of a code not asked before", warm["uncached_lookup"], "ms")
    row("load the model (pipeline)", warm["model_load"], "ms")
    row("code the note, first time", warm["first_code"], "ms")
    row("code the note again", warm["code"], "ms")
    print("(d) imports")
    row('python -c "pass"', nothing)
    row('python -c "import icdcoder"', imp)
    row('python -c "import icdcoder.cli"', imp_cli)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
