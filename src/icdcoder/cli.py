"""The ``icdcoder`` command line. Thin: it parses options, calls the package, and prints with rich."""

from __future__ import annotations

import json
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from icdcoder.errors import IcdcoderError

console = Console(stderr=True)
out = Console()

app = typer.Typer(help="Automated ICD coding: data, ontology, coders and one evaluation protocol.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Prepare, generate and inspect datasets.", no_args_is_help=True)
prepare_app = typer.Typer(help="Turn a source into DIR/{train,val,test}.jsonl (or .parquet) plus manifest.json.",
                          no_args_is_help=True)
ontology_app = typer.Typer(help="Look codes up in the ICD ontology (ICD-10-CM/PCS, ICD-9-CM dx/proc).",
                           no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.add_typer(prepare_app, name="prepare")
app.add_typer(ontology_app, name="ontology")
export_app = typer.Typer(help="Write predictions in a shared task's submission format.", no_args_is_help=True)
app.add_typer(export_app, name="export")
models_app = typer.Typer(help="Named pretrained LMs (e.g. smollm2-135m-instruct): installed offline from pip "
                              "packages, converted once into a cache.", no_args_is_help=True)
app.add_typer(models_app, name="models")


class SplitMethod(str, Enum):
    stratified = "stratified"
    time = "time"


def _ratios(text: str) -> tuple[float, ...]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise typer.BadParameter(f"ratios must be three numbers like 0.8,0.1,0.1, got {text!r}")
    return parts


class Fmt(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"


OutOpt = typer.Option(..., "--out", "-o", help="Output folder; created atomically (replaced only if icdcoder wrote it).")
FmtOpt = typer.Option(Fmt.jsonl, "--format", help="jsonl (interchange, human-readable) or parquet (large data).")
StrictOpt = typer.Option(False, "--strict", help="Make malformed or unknown codes errors instead of counted warnings.")
CheckOpt = typer.Option(True, "--check-codes/--no-check-codes",
                        help="Check every code against the ontology (unknown codes are counted, or errors with --strict).")
TrustPickleOpt = typer.Option(False, "--trust-pickle", help="Read an old TF-IDF model's vectorizers.pkl (a pickle can run code when read: only for models from a source you trust; save the model again to convert it).")


class Engine(str, Enum):
    process = "process"
    local = "local"
    ray = "ray"


class OutFormat(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"


# batch options shared by `code` and `predict`
EngineOpt = typer.Option(Engine.process, "--engine", help="process: code in this process, output one file. local or ray: a resumable batch job; INPUT may be a folder of JSONL/CSV/Parquet shards, --out is a folder of output shards with a manifest (ray: on Ray actors).")
AddressOpt = typer.Option(None, "--address", help="--engine ray: the Ray cluster to join (ray://host:10001, or auto); default: a local Ray sized to this machine.")
WorkersOpt = typer.Option(None, "--workers", min=1, help="--engine ray: coder actors (default: CPUs / --num-cpus, or GPUs / --num-gpus).")
RowsPerShardOpt = typer.Option(1000, "--rows-per-shard", min=1, help="Batch engines: input rows per shard (the unit of work and of resuming).")
FormatOpt = typer.Option(OutFormat.jsonl, "--format", help="Batch engines: output shards as jsonl or parquet.")
NumCpusOpt = typer.Option(1.0, "--num-cpus", min=0.0, help="--engine ray: CPUs each actor holds (its torch threads).")
NumGpusOpt = typer.Option(0.0, "--num-gpus", min=0.0, help="--engine ray: GPUs each actor holds (1: one model replica per GPU, e.g. the vLLM back-end).")
BatchSizeOpt = typer.Option(64, "--batch-size", min=1, help="Batch engines: notes per coder call.")


def _run_batch(spec: Any, source: Path, out_dir: Path, engine: Engine, rows_per_shard: int, workers: Optional[int],
               address: Optional[str], num_cpus: float, num_gpus: float) -> None:
    """Run a batch job with a progress bar over shards; a rerun skips the shards already done."""
    from icdcoder.batch.job import prepare_job, run_job
    from icdcoder.progress import Progress

    shards, todo = prepare_job(spec, source, out_dir, rows_per_shard)  # checked here so the bar knows the total
    if len(todo) < len(shards):
        console.print(f"[cyan]{len(shards) - len(todo):,} of {len(shards):,} shards already done in {out_dir}[/]")
    bar = Progress("batch", sum(s.rows for s in todo), unit="row").start()
    failed = True
    try:
        result = run_job(spec, source, out_dir, engine=engine.value, rows_per_shard=rows_per_shard, workers=workers,
                         address=address, num_cpus=num_cpus, num_gpus=num_gpus,
                         progress=lambda summary: bar.update(summary["rows_in"]), planned=(shards, todo))
        failed = False
    finally:
        bar.close(failed=failed)
    rate = (sum(s.rows for s in todo) / result.seconds) if result.seconds > 0 and todo else 0.0
    out.print(f"{result.coded:,} notes coded, {result.errors:,} error rows, {result.shards:,} shards "
              f"({result.skipped:,} from an earlier run) in {result.seconds:.1f} s ({rate:.1f} rows/s) -> "
              f"{out_dir}/manifest.json")


def _progress(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """Wrap a stream of notes with progress on stderr: a rich bar on a terminal, a plain line every
    ICDCODER_PROGRESS_INTERVAL seconds otherwise (:mod:`icdcoder.progress`)."""
    from icdcoder.progress import track

    return track(items, description, total=total, unit="note")


def _write(items: Iterable, out_dir: Path, *, name: str, source: str, fmt: Fmt, options: dict[str, Any],
           resolver: Any) -> None:
    from icdcoder.data.store import write_dataset

    start = time.perf_counter()
    manifest = write_dataset(_progress(items, f"preparing {name}"), out_dir, name=name, source=source,
                             fmt=fmt.value, options=options, resolver=resolver)
    _print_manifest(manifest, out_dir, time.perf_counter() - start)


def _print_manifest(manifest: dict[str, Any], out_dir: Path, seconds: float) -> None:
    table = Table(title=f"{manifest['name']} -> {out_dir}  ({seconds:.1f} s)")
    for col in ("split", "notes", "labels", "codes", "file"):
        table.add_column(col, justify="right" if col in ("notes", "labels", "codes") else "left")
    for split, info in manifest["splits"].items():
        table.add_row(split, f"{info['n_notes']:,}", f"{info['n_labels']:,}", f"{info['n_codes']:,}", info["file"])
    out.print(table)
    for kind, w in manifest["warnings"].items():
        ex = ", ".join(w.get("examples", []))
        console.print(f"[yellow]warning[/]: {w['count']:,} x {kind}" + (f" (e.g. {ex})" if ex else ""))


def _resolver(strict: bool, check: bool):
    from icdcoder.data.codecheck import CodeResolver

    return CodeResolver(strict=strict, check_ontology=check)


# ----------------------------------------------------------------------------------------------- data
class Lang(str, Enum):
    en = "en"
    es = "es"


class Kind(str, Enum):
    diagnoses = "diagnoses"
    procedures = "procedures"
    both = "both"


@prepare_app.command("codiesp")
def prepare_codiesp(
    root: Path = typer.Option(..., "--root", help="CodiEsp folder holding train/, dev/ (and test/ if present)."),
    lang: Lang = typer.Option(Lang.en, "--lang", help="es: original Spanish (evidence spans kept); en: machine-translated English."),
    kind: Kind = typer.Option(Kind.diagnoses, "--kind", help="Which codes: diagnoses (ICD-10-CM), procedures (ICD-10-PCS) or both."),
    out_dir: Path = OutOpt, fmt: Fmt = FmtOpt, strict: bool = StrictOpt, check: bool = CheckOpt,
) -> None:
    """CodiEsp (CLEF eHealth 2020) from its distribution layout; dev becomes val."""
    from icdcoder.data.codiesp import iter_codiesp

    resolver = _resolver(strict, check)
    items = iter_codiesp(root, lang=lang.value, kind=kind.value, resolver=resolver)
    _write(items, out_dir, name=f"codiesp-{lang.value}-{kind.value}", source="codiesp", fmt=fmt,
           options={"root": str(root), "lang": lang.value, "kind": kind.value}, resolver=resolver)


def _prepare_user_file(path: Path, split: str, split_field: Optional[str], id_field: str, text_field: str,
                       codes_field: str, system: Optional[str], codes_sep: str, out_dir: Path, fmt: Fmt,
                       strict: bool, check: bool, source: str) -> None:
    from icdcoder.data.userfile import iter_user_notes

    resolver = _resolver(strict, check)
    items = iter_user_notes(path, split=split, split_field=split_field, id_field=id_field, text_field=text_field,
                            codes_field=codes_field, system=system, codes_sep=codes_sep, resolver=resolver)
    _write(items, out_dir, name=path.stem, source=source, fmt=fmt, resolver=resolver,
           options={"path": str(path), "split": split, "split_field": split_field, "system": system})


def _user_file_command(source: str, help_text: str):
    def command(
        path: Path = typer.Option(..., "--path", help=f"The {source.upper()} file, one note per line/row."),
        split: str = typer.Option("test", "--split", help="Split every note goes to (train, val/dev, test)."),
        split_field: Optional[str] = typer.Option(None, "--split-field", help="Take each note's split from this field instead."),
        id_field: str = typer.Option("id", "--id-field", help="Field holding the note id."),
        text_field: str = typer.Option("text", "--text-field", help="Field holding the note text."),
        codes_field: str = typer.Option("codes", "--codes-field", help="Field holding the codes (a list, or a string split on --codes-sep)."),
        system: Optional[str] = typer.Option(None, "--system", help="Code system of every code (icd10cm, icd10pcs, icd9cm, icd9pcs); inferred from each code's shape when absent."),
        codes_sep: str = typer.Option(";", "--codes-sep", help="Separator when codes come as one string."),
        out_dir: Path = OutOpt, fmt: Fmt = FmtOpt, strict: bool = StrictOpt, check: bool = CheckOpt,
    ) -> None:
        _prepare_user_file(path, split, split_field, id_field, text_field, codes_field, system, codes_sep,
                           out_dir, fmt, strict, check, source)

    command.__doc__ = help_text
    return command


prepare_app.command("jsonl")(_user_file_command("jsonl", "Your own notes as JSONL: {id, text, codes, ...} per line."))
prepare_app.command("csv")(_user_file_command("csv", "Your own notes as CSV with a header row (id, text, codes columns)."))



class Preset(str, Enum):
    mimiciii_full = "mimiciii_full"
    mimiciii_50 = "mimiciii_50"
    mimiciii_clean = "mimiciii_clean"
    mimiciv_icd9 = "mimiciv_icd9"
    mimiciv_icd10 = "mimiciv_icd10"


def _prepare_mimic(version: int, root: Path, preset: Optional[Preset], split_file: Optional[Path],
                   own_split: Optional["SplitMethod"], ratios: str, seed: int, icd_version: Optional[int],
                   min_code_count: Optional[int], clean: Optional[bool], note_root: Optional[Path],
                   out_dir: Path, fmt: Fmt, strict: bool, check: bool) -> None:
    from icdcoder.data.mimic import prepare_mimic

    start = time.perf_counter()
    kw: dict[str, Any] = {"version": version, "preset": preset.value if preset else None, "split_file": split_file,
                          "own_split": own_split.value if own_split else None, "ratios": _ratios(ratios),
                          "seed": seed, "min_code_count": min_code_count, "clean_text": clean,
                          "progress": True, "strict": strict}  # a bar on a terminal, timed lines elsewhere
    if icd_version is not None:
        kw["icd_version"] = icd_version
    if note_root is not None:
        kw["note_root"] = note_root
    manifest = prepare_mimic(root, out_dir, fmt=fmt.value, resolver=_resolver(strict, check), **kw)
    _print_manifest(manifest, out_dir, time.perf_counter() - start)


def _mimic_command(version: int):
    def command(
        root: Path = typer.Option(..., "--root", help="The PhysioNet folder as downloaded (MIMIC-III: NOTEEVENTS, DIAGNOSES_ICD, PROCEDURES_ICD, ADMISSIONS; MIMIC-IV: hosp/ and note/), .csv or .csv.gz."),
        preset: Optional[Preset] = typer.Option(None, "--preset", help="Community preprocessing of Edin et al. 2023 (code filtering, text cleaning, the matching split file)."),
        split_file: Optional[Path] = typer.Option(None, "--split-file", help="A split file (_id, split), e.g. ../shared/data/mimic_splits/mimiciv_icd10_split.feather."),
        own_split: Optional[SplitMethod] = typer.Option(None, "--own-split", help="Instead of a split file: stratified (patient-level) or time (by admission)."),
        ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,val,test proportions of --own-split."),
        seed: int = typer.Option(13, "--seed", help="Seed of --own-split stratified."),
        icd_version: Optional[int] = typer.Option(None, "--icd-version", help="MIMIC-IV: 9 or 10 (set by the mimiciv presets)."),
        min_code_count: Optional[int] = typer.Option(None, "--min-code-count", help="Drop codes seen in fewer admissions (presets: 10, none for mimiciii_full)."),
        clean: Optional[bool] = typer.Option(None, "--clean/--no-clean", help="Text cleaning as in Edin et al. (lower case, no punctuation or standalone numbers); presets turn it on."),
        note_root: Optional[Path] = typer.Option(None, "--note-root", help="MIMIC-IV: the MIMIC-IV-Note folder when it is not inside --root."),
        out_dir: Path = OutOpt, fmt: Fmt = typer.Option(Fmt.parquet, "--format", help="parquet (default for MIMIC's size) or jsonl."),
        strict: bool = StrictOpt, check: bool = CheckOpt,
    ) -> None:
        _prepare_mimic(version, root, preset, split_file, own_split, ratios, seed, icd_version, min_code_count,
                       clean, note_root, out_dir, fmt, strict, check)

    command.__doc__ = (f"MIMIC-{'III' if version == 3 else 'IV'} discharge summaries and their codes, streamed "
                       "(never all texts in memory, nothing written beside the raw files).")
    return command


prepare_app.command("mimic3")(_mimic_command(3))
prepare_app.command("mimic4")(_mimic_command(4))


@data_app.command("synth")
def synth(
    out_dir: Path = OutOpt,
    seed: int = typer.Option(13, "--seed", help="Same seed, same corpus (byte for byte)."),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="Training notes (default: the corpus default)."),
    n_val: Optional[int] = typer.Option(None, "--n-val", help="Validation notes."),
    n_test: Optional[int] = typer.Option(None, "--n-test", help="Test notes."),
    fmt: Fmt = FmtOpt,
) -> None:
    """Generate the built-in synthetic corpus (the embedded default; needs no credentials)."""
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    sizes = {k: v for k, v in {"n_train": n_train, "n_val": n_val, "n_test": n_test}.items() if v is not None}
    cfg = SynthConfig(seed=seed, **sizes)
    _write(generate_synthetic(cfg), out_dir, name=f"synthetic-seed{seed}", source="synthetic", fmt=fmt,
           options=_config_dict(cfg), resolver=None)


def _config_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    from dataclasses import asdict

    return asdict(cfg)


@data_app.command("split")
def split(
    src_dir: Path = typer.Argument(..., help="A prepared dataset folder; all its splits are pooled."),
    method: SplitMethod = typer.Option(..., "--method", help="stratified: patient-level multi-label iterative stratification (no patient in two splits); time: oldest admissions to train, newest to test."),
    ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,val,test proportions."),
    seed: int = typer.Option(13, "--seed", help="Seed of the stratified split."),
    out_dir: Path = OutOpt,
) -> None:
    """Re-split a prepared dataset with our own splits (when it has no standard split, or to compare)."""
    from icdcoder.data.resplit import resplit

    manifest = resplit(src_dir, out_dir, method=method.value, ratios=_ratios(ratios), seed=seed)
    for name, info in manifest["splits"].items():
        out.print(f"{name}: {info['n_notes']:,} notes, {info['n_codes']:,} codes")


@data_app.command("spans")
def spans(
    data_dir: Path = typer.Argument(..., help="A prepared dataset folder (with manifest.json)."),
    out_path: Path = typer.Option(..., "--out", help="Where to write the span examples (JSONL)."),
    sources: str = typer.Option("gold,ontology", "--sources", help="Comma-separated: gold (annotated evidence spans of the training notes), ontology (descriptions, inclusion and index terms, rewritten)."),
    label_space: str = typer.Option("train", "--label-space", help="Target codes: train (the training split's codes), ontology (every billable code of their systems), or a file with one code per line. Split names (train+val) or dataset (every split) read evaluation gold and need --allow-evaluation-labels."),
    allow_evaluation_labels: bool = typer.Option(False, "--allow-evaluation-labels", help="Allow a label space read from val/test gold (it tells training which codes the evaluation notes have)."),
    min_examples: int = typer.Option(4, "--min-examples", help="Expansion: rare and unseen target codes get at least this many examples (0: no expansion)."),
    max_train_count: int = typer.Option(2, "--max-train-count", help="Expansion: codes seen at most this often in training count as rare."),
    index_file: Optional[Path] = typer.Option(None, "--index-file", help="CMS ICD-10-CM index XML, for index terms."),
) -> None:
    """Build the code-centric span data of a dataset (what mixed training draws from) and show its coverage."""
    from icdcoder.data.store import load_dataset
    from icdcoder.training.mixing import CodeCentricConfig, build_span_pool
    from icdcoder.training.spans import write_spans

    cfg = CodeCentricConfig(sources=[s.strip() for s in sources.split(",") if s.strip()], label_space=label_space,
                            evaluation_labels=allow_evaluation_labels,
                            expand={"min_examples": min_examples, "max_train_count": max_train_count}
                            if min_examples > 0 else None, index_file=str(index_file) if index_file else None)
    pool, cov = build_span_pool(cfg, load_dataset(data_dir), log=lambda m: out.print(m))
    n = write_spans(pool, out_path)
    target = cov["label_space"]["code_centric_target"]
    t = Table(title=f"{n:,} span examples -> {out_path}",
              caption=f"label space: {label_space} ({target['source']}"
                      + (f": {'+'.join(target['splits'])}" if target["splits"] else "") + ")"
                      + (" - EVALUATION LABELS" if cov["label_space"]["evaluation_labels"] else ""))
    t.add_column("")
    t.add_column("count", justify="right")
    for k, v in cov["spans_by_source"].items():
        t.add_row(f"source: {k}", f"{v:,}")
    for k in ("target_codes", "with_documents", "with_spans", "with_any"):
        t.add_row(k.replace("_", " "), f"{cov[k]:,}")
    out.print(t)


@data_app.command("stats")
def stats(
    data_dir: Path = typer.Argument(..., help="A prepared dataset folder (with manifest.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    top: int = typer.Option(10, "--top", help="How many of the most frequent training codes to list."),
) -> None:
    """Notes, labels, codes, text lengths and code-frequency buckets of each split."""
    from icdcoder.data.stats import dataset_stats

    s = dataset_stats(data_dir, top=top)
    if as_json:
        out.print_json(json.dumps(s))
        return
    print_stats(s)


def print_stats(s: dict[str, Any]) -> None:
    t = Table(title=f"{s['name']}  ({s['source']}, {s['format']}, hash {str(s['content_hash'])[:12]})")
    cols = ["notes", "labels", "codes", "labels_per_note", "chars_mean", "chars_max", "spans"]
    t.add_column("split")
    for c in cols:
        t.add_column(c.replace("_", " "), justify="right")
    for split, v in s["splits"].items():
        t.add_row(split, *[f"{v[c]:,}" if isinstance(v[c], int) else str(v[c]) for c in cols])
    out.print(t)
    b = Table(title="labels by training frequency of their code")
    b.add_column("split")
    names = list(next(iter(s["labels_by_train_frequency"].values())).keys()) if s["labels_by_train_frequency"] else []
    for n in names:
        b.add_column(n, justify="right")
    for split, v in s["labels_by_train_frequency"].items():
        b.add_row(split, *[f"{v[n]:,}" for n in names])
    out.print(b)
    out.print(f"{s['codes_total']:,} distinct codes, {s['codes_not_in_train']:,} never in train")
    if s["top_codes"]:
        out.print("most frequent in train: " + ", ".join(f"{c} ({n})" for c, n in s["top_codes"]))
    for kind, w in s["warnings"].items():
        out.print(f"[yellow]warning[/]: {w['count']:,} x {kind}")


class GemPolicy(str, Enum):
    all = "all"
    first = "first"
    closest = "closest"
    prior = "prior"


def _icd_version(v: int | None) -> int | None:
    if v is not None and v not in (9, 10):
        raise typer.BadParameter(f"must be 9 or 10, not {v}")
    return v


ToOpt = typer.Option(..., "--to", callback=_icd_version, help="Target ICD version: 9 or 10.")
PriorOpt = typer.Option(None, "--prior", help="A prepared dataset in the target version: its training code counts pick among GEM alternatives (policy prior).")


@data_app.command("recode")
def recode(
    data_dir: Path = typer.Argument(..., help="A prepared dataset folder; every split is recoded."),
    to: int = ToOpt,
    policy: GemPolicy = typer.Option(GemPolicy.closest, "--policy", help="Which GEM alternatives a code keeps: closest (one: exact rows, else the closest description, else unspecified), first (one, exact rows first, GEM order), prior (the most frequent in --prior), all."),
    prior: Optional[Path] = PriorOpt,
    out_dir: Path = OutOpt,
) -> None:
    """Map every gold code to the other ICD version through the CMS GEMs (spans follow their codes)."""
    from icdcoder.data.store import iter_notes, read_manifest, write_dataset
    from icdcoder.rules.versions import RecodeReport, iter_recoded, prior_from_dataset

    manifest = read_manifest(data_dir)
    items = ((split, note) for split, info in manifest["splits"].items() for note in iter_notes(data_dir / info["file"]))
    report = RecodeReport()
    options = {"recoded_from": str(data_dir), "to_version": to, "policy": policy.value,
               "prior": str(prior) if prior else None, "source_options": manifest.get("options", {})}

    counts = prior_from_dataset(prior) if prior else None

    def recoded():  # the manifest is written after the last note, so it can hold the whole report
        yield from iter_recoded(items, to, report, policy=policy.value, prior=counts)
        options["recode"] = report.as_dict()

    start = time.perf_counter()
    written = write_dataset(_progress(recoded(), f"recoding to ICD-{to}"), out_dir, name=f"{manifest['name']}-icd{to}",
                            source=manifest.get("source", "recoded"), fmt=manifest.get("format", "jsonl"),
                            options=options)
    _print_manifest(written, out_dir, time.perf_counter() - start)
    summary = options["recode"]
    t = Table("", "count", title=f"GEM recoding to ICD-{to} (policy {policy.value})")
    for key, value in summary.items():
        if key != "no_map_codes":
            t.add_row(key.replace("_", " "), f"{value:,}")
    out.print(t)
    dropped = summary["no_map_codes"]
    if dropped:
        console.print("[yellow]no map[/]: " + ", ".join(f"{c} ({n})" for c, n in list(dropped.items())[:10]))


# ------------------------------------------------------------------------------------------- ontology
@ontology_app.command("lookup")
def ontology_lookup(
    code: str = typer.Argument(..., help="A code in any spelling: E11.9, e119, 428.0, 4280, 0DTJ4ZZ, 38.93."),
    system: Optional[str] = typer.Option(None, "--system", help="icd10cm, icd10pcs, icd9cm or icd9pcs; inferred from the code's shape when absent."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Description, hierarchy, billable flag, inclusion and Excludes1 notes, and GEM mappings of a code."""
    from icdcoder.codes import CodeSystem, infer_system, parse_system
    from icdcoder.ontology import get_ontology

    ont = get_ontology()
    info = ont.lookup(code, system)
    if info is None:
        raise IcdcoderError(f"code {code!r} not found" + (f" in {system}" if system else
                            f" (read as {infer_system(code).value}; pass --system to choose)"))
    d = info.to_dict()
    sys_ = parse_system(info.system)
    try:
        maps = ont.map_9_to_10(info.code, sys_) if sys_.version == 9 else ont.map_10_to_9(info.code, sys_)
        d["gem"] = [m.to_dict() for m in maps]
    except IcdcoderError as e:
        d["gem"] = str(e)
    if as_json:
        out.print_json(json.dumps(d, default=str))
        return
    t = Table(show_header=False, title=f"{d['code']}  ({CodeSystem(sys_).value})")
    t.add_column(style="bold")
    t.add_column()
    for key, value in d.items():
        if value in (None, [], "", ()):
            continue
        if key == "gem" and isinstance(value, list):
            value = "; ".join(f"{m.get('target') or '(no map)'}" + (" ~" if m.get("approximate") else "") for m in value)
        elif isinstance(value, (list, tuple)):
            value = "\n".join(map(str, value))
        t.add_row(key.replace("_", " "), str(value))
    out.print(t)


@ontology_app.command("search")
def ontology_search(
    text: str = typer.Argument(..., help="Words to find in code descriptions, e.g. 'heart failure'."),
    system: Optional[str] = typer.Option(None, "--system", help="Limit to one system."),
    limit: int = typer.Option(20, "--limit", help="At most this many results."),
) -> None:
    """Find codes whose description (or inclusion terms) contain the words."""
    from icdcoder.codes import CodeSystem
    from icdcoder.ontology import get_ontology

    t = Table("code", "system", "billable", "description")
    for info in get_ontology().search(text, system=system, limit=limit):
        t.add_row(info.code, CodeSystem(info.system).value, "yes" if info.billable else "", info.description or "")
    out.print(t)


# ------------------------------------------------------------------------------- train / evaluate
@app.command("train")
def train(
    config: Path = typer.Argument(..., help="One experiment's YAML: data, coder (name + params), seed, output folder."),
    force: bool = typer.Option(False, "--force", help="Fit again even if the output folder holds a fitted coder."),
) -> None:
    """Fit a coder from one config, tune its threshold on val, predict and evaluate val and test."""
    from icdcoder.experiment import ExperimentConfig, run_experiment

    cfg = ExperimentConfig.from_yaml(config)
    result = run_experiment(cfg, force=force, log=lambda m: console.print(f"[cyan]{m}[/]"))
    if result["metrics"]:
        print_metrics({cfg.name: result["metrics"]})
    out.print(f"run folder: {cfg.output}")


@app.command("predict")
def predict(
    model: Path = typer.Option(..., "--model", help="A saved coder folder (a run's model/)."),
    data: Path = typer.Option(..., "--data", help="A prepared dataset folder."),
    split: str = typer.Option("test", "--split", help="Which split to code."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Predictions JSONL to write (atomically); with a batch --engine, a folder."),
    trust_pickle: bool = TrustPickleOpt,
    engine: Engine = EngineOpt, address: Optional[str] = AddressOpt, workers: Optional[int] = WorkersOpt,
    rows_per_shard: int = RowsPerShardOpt, fmt: OutFormat = FormatOpt, num_cpus: float = NumCpusOpt,
    num_gpus: float = NumGpusOpt, batch_size: int = BatchSizeOpt,
) -> None:
    """Code every note of a split with a saved coder; writes the threshold beside the predictions."""
    from icdcoder.coders import Coder
    from icdcoder.data.store import load_dataset, split_file
    from icdcoder.io import write_json
    from icdcoder.prediction import write_predictions

    if engine is not Engine.process:
        from icdcoder.batch.job import JobSpec

        spec = JobSpec(model=str(model), mode="predict", output_format=fmt.value, batch_size=batch_size,
                       trust_pickle=trust_pickle)
        _run_batch(spec, split_file(data, split), out_path, engine, rows_per_shard, workers, address, num_cpus,
                   num_gpus)
        return

    coder = Coder.load(model, trust_pickle=trust_pickle)
    notes = load_dataset(data, [split])[split]
    start = time.perf_counter()
    preds = coder.predict(notes)  # coders with long predict loops (plm_icd, generative) report their progress
    write_predictions(preds, out_path)
    write_json(out_path.parent / "threshold.json", {"threshold": coder.threshold,
                                                   "per_code_thresholds": coder.per_code_thresholds})
    out.print(f"{len(preds):,} notes in {time.perf_counter() - start:.1f} s -> {out_path}")


class CodesScope(str, Enum):
    all = "all"
    seen = "seen"


@app.command("evaluate")
def evaluate(
    gold: Path = typer.Option(..., "--gold", help="The prepared dataset folder the predictions are for."),
    split: str = typer.Option("test", "--split", help="Which split of it."),
    pred: Path = typer.Option(..., "--pred", help="Predictions JSONL ({id, codes: [{code, score, evidence}]} per line)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Override the threshold the predictions carry: per line (icdcoder code output), else threshold.json / coder.json beside them. Without any of these evaluate refuses to guess."),
    codes: CodesScope = typer.Option(CodesScope.all, "--codes", help="all: every code of the label space; seen: only codes seen in training."),
    analysis: bool = typer.Option(False, "--analysis", help="Add the error analysis (per-code table, missed, spurious, near misses)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON here."),
) -> None:
    """Score a predictions file under the one protocol (micro/macro F1, AUC, AUPRC, P@k, R@k, MAP, ...)."""
    from icdcoder.evaluation import evaluate_files
    from icdcoder.io import write_json

    m = evaluate_files(gold, split, pred, threshold=threshold, codes=codes.value, analysis=analysis)
    per = f" and {m['n_per_code_thresholds']:,} per-code thresholds" if m.get("n_per_code_thresholds") else ""
    out.print(f"threshold {m['threshold']:.4g}{per}, from {m['threshold_source']}")
    print_metrics({pred.name: m})
    if m.get("by_bucket"):
        t = Table("bucket (train freq.)", "codes", "micro F1", "macro F1", title="by code frequency in training")
        for name, b in m["by_bucket"].items():
            t.add_row(name, f"{b.get('n_codes', 0):,}", _num(b.get("micro_f1")), _num(b.get("macro_f1")))
        out.print(t)
    if json_out:
        write_json(json_out, m)
        out.print(f"metrics -> {json_out}")


@export_app.command("codiesp")
def export_codiesp(
    pred: Path = typer.Argument(..., help="Predictions JSONL (a run's predictions-<split>.jsonl, or icdcoder code output)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="The CodiEsp-D/P TSV to write (articleID<TAB>code, atomically)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Submit codes at or above this score; default: the threshold the predictions carry (as evaluate)."),
) -> None:
    """CodiEsp's submission format: the submitted codes of each note (at or above the threshold), in rank
    order, lower case with dots, so the shared task's own scorer can read them."""
    from icdcoder.evaluation.codiesp import write_submission
    from icdcoder.evaluation.protocol import resolve_threshold
    from icdcoder.prediction import read_predictions

    t, per_code, source = resolve_threshold(pred, threshold)
    n = write_submission(read_predictions(pred), out_path, t, per_code)
    out.print(f"{n:,} codes at threshold {t:.4g} (from {source}) -> {out_path}")


@app.command("translate")
def translate(
    pred: Path = typer.Argument(..., help="Predictions JSONL of a coder trained on the other ICD version."),
    to: int = ToOpt,
    model: Optional[Path] = typer.Option(None, "--model", help="The coder folder that made the predictions: its label space gives each code's system."),
    from_system: Optional[str] = typer.Option(None, "--from-system", help="Read every code as this system (icd9cm, icd9pcs, icd10cm, icd10pcs); default: inferred from its form."),
    policy: GemPolicy = typer.Option(GemPolicy.all, "--policy", help="Which GEM alternatives a code keeps: all, closest (one: exact rows, else the closest description), first (exact rows first, GEM order), prior (the most frequent in --prior)."),
    prior: Optional[Path] = PriorOpt,
    approximate_weight: float = typer.Option(1.0, "--approximate-weight", min=0.0, help="Multiply the score of codes reached through an approximate mapping by this."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Translated predictions JSONL (written atomically; threshold.json beside it)."),
) -> None:
    """Map predicted codes to the other ICD version through the CMS GEMs, each change recorded as an edit."""
    from icdcoder.evaluation import stored_thresholds
    from icdcoder.io import write_json
    from icdcoder.prediction import read_predictions, write_predictions
    from icdcoder.rules.versions import (edit_summary, infer_system_of, model_system_of, prior_from_dataset,
                                         translate_predictions, translate_thresholds)

    if model is not None and from_system is not None:
        raise typer.BadParameter("give --model or --from-system, not both")
    system_of = model_system_of(model) if model is not None else infer_system_of(to, from_system)
    counts = prior_from_dataset(prior) if prior else None
    preds = translate_predictions(read_predictions(pred), system_of, to, policy=policy.value, prior=counts,
                                  approximate_weight=approximate_weight)
    write_predictions(preds, out_path)
    threshold, per_code, source = stored_thresholds(pred)
    if source is None and model is not None:
        threshold, per_code, source = stored_thresholds(model / "coder.json")
    if source is not None:
        moved = translate_thresholds(per_code, system_of, to, policy=policy.value, prior=counts)
        if out_path.parent.resolve() == pred.parent.resolve():
            moved = {**per_code, **moved}  # the input's thresholds must keep working too
        write_json(out_path.parent / "threshold.json", {"threshold": threshold, "per_code_thresholds": moved})
    s = edit_summary(preds)
    out.print(f"{len(preds):,} notes: {s['mapped']:,} codes mapped, {s['dropped']:,} dropped, "
              f"{s['approximate']:,} of {s['codes']:,} output codes approximate -> {out_path}")


@app.command("compare")
def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders (each with metrics.json and predictions.jsonl)."),
    out_dir: Path = typer.Option(Path("runs/compare"), "--out", "-o", help="Folder for report.md and report.html."),
    resamples: int = typer.Option(1000, "--resamples", help="Paired bootstrap resamples of notes."),
) -> None:
    """Report (Markdown + self-contained HTML with plots) comparing coders on the same split."""
    from icdcoder.evaluation import compare_runs

    compare_runs(runs, out_dir, n_resamples=resamples)
    out.print(f"report -> {out_dir / 'report.md'} and {out_dir / 'report.html'}")


METRIC_COLUMNS = ("micro_f1", "macro_f1", "micro_precision", "micro_recall", "micro_auc", "macro_auc", "micro_auprc",
                  "p@8", "r@8", "r_precision", "map", "codiesp_map", "exact_match")


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def print_metrics(runs: dict[str, dict[str, Any]]) -> None:
    """One row per metric, one column per run (fits a terminal however many metrics there are)."""
    t = Table(title="metrics")
    t.add_column("metric")
    for name in runs:
        t.add_column(name, justify="right")
    for c in METRIC_COLUMNS:
        t.add_row(c.replace("_", " "), *[_num(m.get(c)) for m in runs.values()])
    out.print(t)


# ------------------------------------------------------------------------------------------- using a coder
class Billable(str, Enum):
    specify = "specify"
    flag = "flag"
    drop = "drop"
    off = "off"


# the options `code` and `serve` share: the same options give the same codes
RulesOpt = typer.Option(True, "--rules/--no-rules", help="Apply the ICD rule engine after the coder.")
BillableOpt = typer.Option(Billable.specify, "--billable", help="Category codes: replace by the unspecified "
                           "subcode, flag, drop, or leave.")
CodesFileOpt = typer.Option(None, "--codes-file", help="A CMS code list of one fiscal year to check codes "
                            "against (icd10cm_codes_YYYY.txt).")
LabelSpaceOpt = typer.Option(False, "--label-space", help="Drop codes outside the model's label space.")
TranslateOpt = typer.Option(None, "--to", callback=_icd_version,
                            help="Translate the codes to ICD version 9 or 10 (GEMs).")


def _rule_config(rules: bool, billable: Billable, codes_file: Optional[Path], label_space: bool) -> Any:
    from icdcoder.rules import RuleConfig

    if not rules:
        return RuleConfig.none()
    return RuleConfig(billable=billable.value, codes_file=codes_file, label_space=label_space)


def _notes_to_code(source: str) -> list[Any]:
    """A .txt file is one note; .jsonl/.csv hold one note per line/row ({id, text}); ``-`` reads stdin:
    JSONL when it starts with ``{`` (after a BOM and blanks), else one plain-text note."""
    import codecs

    from icdcoder.data.note import Note
    from icdcoder.data.userfile import iter_user_notes
    from icdcoder.io import read_text_utf8
    from icdcoder.text.validate import is_blank

    if source == "-":
        raw = sys.stdin.buffer.read().removeprefix(codecs.BOM_UTF8)
        if raw.lstrip().startswith(b"{"):
            return [n for _, n in iter_user_notes("<stdin>", lines=raw.splitlines())]
        text, note_id = raw.decode("utf-8", errors="replace"), "stdin"
    else:
        path = Path(source)
        if path.suffix.lower() in (".jsonl", ".csv", ".tsv"):
            return [n for _, n in iter_user_notes(path)]
        text, note_id = read_text_utf8(path, strip_bom=True), path.stem
    if is_blank(text):
        raise IcdcoderError(f"{source}: the note is empty")
    return [Note(id=note_id, text=text)]


def print_coded(coded: Any, text: str) -> None:
    """One rich table per note: rank, code, description, score, first evidence, flags; then the edits."""
    t = Table("#", "code", "description", "score", "evidence", "flags", title=f"note {coded.id}",
              caption=f"suggested: score >= {coded.threshold:.3f}")
    for i, c in enumerate(coded.codes, 1):
        ev = "; ".join(dict.fromkeys(f"\"{e.text or text[e.start:e.end]}\"" for e in c.evidence[:2]))
        style = None if c.suggested else "dim"
        t.add_row(str(i), c.code, c.description or "?", f"{c.score:.3f}", ev, ", ".join(c.flags), style=style)
    out.print(t)
    for e in coded.edits:
        out.print(f"  [yellow]{e.rule}[/] {e.action} {' -> '.join(e.codes)}: {e.reason}")


@app.command("code")
def code(
    source: str = typer.Argument(..., help="note.txt (one note), notes.jsonl / notes.csv ({id, text} per line), "
                                            "or - for stdin (JSONL or plain text)."),
    model: Path = typer.Option(..., "--model", help="A saved coder folder (a run's model/)."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON object per note instead of tables."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the JSONL here (atomically)."),
    top_k: int = typer.Option(10, "--top-k", help="The terminal table lists at most this many codes per note (JSONL output is not cut: see --limit)."),
    candidates: bool = typer.Option(False, "--candidates", help="The terminal table also lists codes below the threshold (JSONL output always has them, marked suggested: false)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="JSONL output: keep at most this many codes per note (default: every code the coder returns)."),
    suggested_only: bool = typer.Option(False, "--suggested-only", help="JSONL output: keep only the suggested codes (score at or above the threshold)."),
    rules: bool = RulesOpt, billable: Billable = BillableOpt, codes_file: Optional[Path] = CodesFileOpt,
    label_space: bool = LabelSpaceOpt, to: Optional[int] = TranslateOpt, trust_pickle: bool = TrustPickleOpt,
    engine: Engine = EngineOpt, address: Optional[str] = AddressOpt, workers: Optional[int] = WorkersOpt,
    rows_per_shard: int = RowsPerShardOpt, fmt: OutFormat = FormatOpt, num_cpus: float = NumCpusOpt,
    num_gpus: float = NumGpusOpt, batch_size: int = BatchSizeOpt,
) -> None:
    """Code notes with a trained coder: ranked codes with descriptions, scores and evidence.

    With --engine local or ray: a resumable batch job over a file or folder of JSONL/CSV/Parquet; bad rows
    become error rows instead of stopping the job (see `icdcoder.batch`)."""
    from icdcoder.io import atomic_write
    from icdcoder.pipeline import CodingPipeline

    if engine is not Engine.process:
        from icdcoder.batch.job import JobSpec

        if out_path is None:
            raise typer.BadParameter("a batch --engine writes a folder: give --out")
        rule_cfg = _rule_config(rules, billable, codes_file, label_space)
        spec = JobSpec(model=str(model), mode="code", output_format=fmt.value, batch_size=batch_size,
                       trust_pickle=trust_pickle, rules=rule_cfg.model_dump(mode="json"), to_version=to,
                       limit=limit, suggested_only=suggested_only)
        _run_batch(spec, Path(source), out_path, engine, rows_per_shard, workers, address, num_cpus, num_gpus)
        return

    notes = _notes_to_code(source)
    pipeline = CodingPipeline.from_dir(model, rules=_rule_config(rules, billable, codes_file, label_space),
                                       to_version=to, top_k=None, trust_pickle=trust_pickle)
    coded = pipeline.code(notes)
    if out_path is not None or jsonl:  # machine-readable: every candidate unless a limit is asked for
        for c in coded:
            c.codes = ([x for x in c.codes if x.suggested] if suggested_only else c.codes)[:limit]
        lines = [c.model_dump_json() for c in coded]
        if out_path is not None:
            with atomic_write(out_path) as fh:
                fh.writelines(line + "\n" for line in lines)
            out.print(f"{len(coded):,} notes -> {out_path}")
        else:
            for line in lines:
                print(line, flush=True)
    else:  # the table is for reading: suggested codes (and candidates when asked), top_k of them
        for c, n in zip(coded, notes):
            c.codes = ([x for x in c.codes if x.suggested] if not candidates else c.codes)[:top_k]
            print_coded(c, n.text)


# ------------------------------------------------------------------------------------------- study / demo
def _run_study(config: Path, out_dir: Optional[Path], only: Optional[list[str]]) -> None:
    from icdcoder.study import StudyConfig, run_study

    cfg = StudyConfig.from_yaml(config)
    if out_dir is not None:
        cfg.output = str(out_dir)
    needs_llm = [r.name for r in cfg.runs if r.coder != "tfidf"]
    if needs_llm and not _has_torch():
        raise IcdcoderError(f"runs {needs_llm} need the llm extra: pip install -c constraints.txt -e '.[llm]'")
    start = time.perf_counter()
    result = run_study(cfg, only=only, log=lambda m: console.print(f"[cyan]{m}[/]"))
    from icdcoder.distributed import is_main_process

    if not is_main_process():  # the other ranks of a launcher trained along; rank 0 reports
        return
    metrics = {}
    for name in result["runs"]:
        m = json.loads((Path(cfg.output) / name / "metrics.json").read_text(encoding="utf-8"))
        metrics[name] = m
    print_metrics(metrics)
    t = Table(title="cost and errors (test)")
    for col in ("run", "fit s", "notes/s", "missed", "spurious", "malformed"):
        t.add_column(col, justify="right")
    for name, r in result["runs"].items():
        t.add_row(name, f"{r['fit_seconds'] or 0:.0f}", f"{r['predict_notes_per_second'] or 0:.1f}",
                  f"{r['gold_missed']:,}", f"{r['spurious']:,}",
                  "-" if r["malformed_answers"] is None else f"{r['malformed_answers']:,}")
    out.print(t)
    rep = result["report"]
    out.print(f"study finished in {time.perf_counter() - start:.0f} s; report -> {rep['report_html']} "
              f"(and report.md)")


@app.command("study")
def study(
    config: Path = typer.Argument(..., help="A study YAML: data, the tiny LM, and the runs to train and compare."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Override the config's output folder."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only these run names (repeatable)."),
) -> None:
    """Train and evaluate every coder of a study under one protocol, then write one report.

    Finished runs are reused and an interrupted one resumes from its checkpoints."""
    _run_study(config, out_dir, only)


DEMO_CONFIG = Path(__file__).parent / "resources" / "study-demo.yaml"


@app.command("demo")
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's outputs."),
) -> None:
    """The main job on the embedded default: the whole study (TF-IDF, PLM-ICD, prompting, SFT, GRPO,
    PHI, code-centric SFT) on the synthetic corpus, with one report. About 15 minutes on 2 CPU cores.

    The config is ``icdcoder/resources/study-demo.yaml``; re-running reuses what is already in --out."""
    _run_study(DEMO_CONFIG, out_dir, None)


def _has_torch() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


# ------------------------------------------------------------------------------------------------ models
CacheOpt = typer.Option(None, "--cache", help="Folder of prepared models (default: $ICDCODER_CACHE/models, "
                                              "else ~/.cache/icdcoder/models).")


@models_app.command("list")
def models_list(cache: Optional[Path] = CacheOpt, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every named model: size, licence, whether its package is installed and where it is prepared."""
    from icdcoder.lm_models import describe

    rows = describe(cache)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table("name", "size", "licence", "installed", title="named models (model: NAME in a coder's params)")
    t.add_column("prepared", overflow="fold")
    for r in rows:
        lic = r["license"] + (" (accept to install)" if r["gated"] else "")
        t.add_row(r["name"], r["size"], lic, "yes" if r["installed"] else "no",
                  r["folder"] if r["prepared"] else f"no ({r['problem']})")
    out.print(t)


@models_app.command("prepare")
def models_prepare(
    name: str = typer.Argument(..., help="A named model (icdcoder models list)."),
    cache: Optional[Path] = CacheOpt,
    accept_license: bool = typer.Option(False, "--accept-license", help="Accept a gated model's licence terms."),
    force: bool = typer.Option(False, "--force", help="Convert again even if the prepared folder checks out."),
) -> None:
    """Install the model's package if missing (pip --no-deps, constraints.txt), convert its GGUF once
    into a safetensors folder with a checksum manifest; a prepared folder that checks out is reused."""
    from icdcoder.lm_models import LicenseNotAccepted, prepare

    start = time.perf_counter()
    try:
        folder = prepare(name, cache, install=True, accept_license=accept_license, force=force, log=console.print)
    except LicenseNotAccepted as e:
        console.print(f"{name} is distributed under the [bold]{e.entry.license}[/]: {e.entry.license_url}")
        if not (sys.stdin.isatty() and typer.confirm("Have you read these terms, and do you accept them?")):
            raise
        folder = prepare(name, cache, install=True, accept_license=True, force=force, log=console.print)
    console.print(f"{name}: ready in {time.perf_counter() - start:.1f} s")
    out.print(str(folder))


@models_app.command("verify")
def models_verify(name: str = typer.Argument(..., help="A named model."), cache: Optional[Path] = CacheOpt) -> None:
    """Recompute the sha256 of every file of a prepared model against its manifest (exit 1 on a mismatch)."""
    from icdcoder.lm_models import verify

    folder, issues = verify(name, cache)
    if issues:
        for issue in issues:
            console.print(f"[red]{issue}[/]")
        console.print(f"{folder}: damaged or absent; rebuild with: icdcoder models prepare {name}")
        raise typer.Exit(1)
    console.print(f"{folder}: every file matches its manifest")


# ------------------------------------------------------------------------------------------------- serve
@app.command("serve")
def serve(
    model: Path = typer.Option(..., "--model", help="A saved coder folder (a run's model/)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; anything but loopback needs a token."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    token: Optional[str] = typer.Option(None, "--token", envvar="ICDCODER_TOKEN", show_envvar=True,
                                        help="Bearer token every API call must send (the env var keeps it out of the process list)."),
    max_body_bytes: Optional[int] = typer.Option(None, "--max-body-bytes", help="Largest request body; bigger gets 413. Default 1 MiB."),
    max_notes: Optional[int] = typer.Option(None, "--max-notes", help="Notes per request. Default 64."),
    max_note_chars: Optional[int] = typer.Option(None, "--max-note-chars", help="Characters per note. Default 200,000."),
    max_concurrency: Optional[int] = typer.Option(None, "--max-concurrency", help="Requests coding at once. Default 4."),
    max_queue: Optional[int] = typer.Option(None, "--max-queue", help="Requests waiting for a slot; beyond it 503 with Retry-After. Default 16."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds a request may wait and code before 503/504. Default 60."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Candidates listed per note (default: all the coder returns)."),
    read_timeout: Optional[float] = typer.Option(None, "--read-timeout", help="Seconds a client has to send a whole request once it connects or starts one; slower (slowloris) or silent ones are disconnected. Default 15."),
    keep_alive: Optional[float] = typer.Option(None, "--keep-alive", help="Seconds an idle connection stays open between requests. Default 5."),
    max_connections: Optional[int] = typer.Option(None, "--max-connections", help="Open connections at most; when full, the one waiting longest on an unfinished request is closed. Default 1000, lowered to fit ulimit -n."),
    backlog: Optional[int] = typer.Option(None, "--backlog", help="Connections waiting to be accepted. Default 2048, lowered to fit ulimit -n."),
    rules: bool = RulesOpt, billable: Billable = BillableOpt, codes_file: Optional[Path] = CodesFileOpt,
    label_space: bool = LabelSpaceOpt, to: Optional[int] = TranslateOpt, trust_pickle: bool = TrustPickleOpt,
) -> None:
    """Serve a coder over HTTP: POST /v1/code, GET /v1/codes/{code}, the review page at /, API docs at /docs.

    The rule options are those of ``icdcoder code``: the same options give the same codes."""
    from pydantic import ValidationError

    from icdcoder.data.note import first_error
    from icdcoder.serving.settings import ServeSettings

    given = {"host": host, "port": port, "token": token, "max_body_bytes": max_body_bytes, "max_notes": max_notes,
             "max_note_chars": max_note_chars, "max_concurrency": max_concurrency, "max_queue": max_queue,
             "timeout_s": timeout, "top_k": top_k, "read_timeout_s": read_timeout, "keep_alive_s": keep_alive,
             "max_connections": max_connections, "backlog": backlog}
    try:
        settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        field, msg = first_error(e)
        raise IcdcoderError(f"{field}: {msg}" if field else msg) from None
    try:
        from icdcoder.serving.server import load_app, run
    except ImportError as e:
        raise IcdcoderError(f"icdcoder serve needs the serve extra ({e.name} is missing): "
                            "pip install -c constraints.txt -e '.[serve]'") from None
    # option combinations the pipeline refuses (--label-space with --to) raise ConfigError: main() prints it
    web_app = load_app(model, settings, rules=_rule_config(rules, billable, codes_file, label_space), to_version=to,
                       trust_pickle=trust_pickle)
    where = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    console.print(f"review page {where}/ · API docs {where}/docs" + (" · token required" if settings.token else ""))
    run(web_app, settings)


def main() -> None:
    """Entry point: errors icdcoder raises on purpose are printed plainly, without a traceback."""
    try:
        app()
    except IcdcoderError as e:
        console.print(f"[bold red]error[/]: {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
