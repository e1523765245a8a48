"""Batch coding: a folder of output shards, one per input shard, that a killed job finishes on rerun.

Layout of ``--out``::

    job.json               what the job is: model, input, shard plan, output format (a rerun must match)
    coded/part-00000.jsonl one row per coded note (``code``: a CodedNote, ``predict``: a Prediction),
                           in input order; ``.parquet`` with --format parquet
    errors/part-00000.jsonl one row per input row that is not a note: source, line, id, error
    done/part-00000.json   written last, atomically: the shard is complete (its counts and time)
    manifest.json          when every shard is done: totals and every shard's counts

Every input row ends up as exactly one coded row or one error row. A shard's outputs are written
atomically and its ``done`` record after them, so a shard is either finished or redone from scratch;
a rerun skips finished shards. Concatenating ``coded/`` in name order gives what the single-process
``icdcoder code --out`` writes for the same notes, row for row.

The engines only decide where :class:`ShardWorker` runs: ``local`` in this process, ``ray`` in Ray
actors (:mod:`icdcoder.batch.ray_engine`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from icdcoder.batch.shards import Shard, plan_shards, read_shard
from icdcoder.errors import IcdcoderError
from icdcoder.io import atomic_write, write_json

FORMATS = ("jsonl", "parquet")
MODES = ("code", "predict")
JOB_VERSION = 1


@dataclass
class JobSpec:
    """Everything a worker needs to build its coder: plain data, so it travels to other processes."""

    model: str
    mode: str = "code"                      # code: the CodingPipeline (rules, descriptions); predict: the raw coder
    output_format: str = "jsonl"
    batch_size: int = 64                    # notes per coder call inside a shard
    trust_pickle: bool = False
    rules: dict[str, Any] | None = None     # RuleConfig fields (code mode); None: the default rules
    to_version: int | None = None
    limit: int | None = None                # code mode: keep at most this many codes per note
    suggested_only: bool = False
    id_field: str = "id"
    text_field: str = "text"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise IcdcoderError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.output_format not in FORMATS:
            raise IcdcoderError(f"output format must be one of {FORMATS}, not {self.output_format!r}")
        if self.batch_size < 1:
            raise IcdcoderError("batch_size must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ShardWorker:
    """Loads the coder once, then codes whole shards: the unit a Ray actor or the local loop runs."""

    def __init__(self, spec: JobSpec | dict[str, Any]):
        self.spec = spec if isinstance(spec, JobSpec) else JobSpec(**spec)
        s = self.spec
        if s.mode == "code":
            from icdcoder.pipeline import CodingPipeline
            from icdcoder.rules import RuleConfig

            rules = RuleConfig(**s.rules) if s.rules is not None else None
            self.pipeline = CodingPipeline.from_dir(s.model, rules=rules, to_version=s.to_version,
                                                    trust_pickle=s.trust_pickle)
            self._run = self._code
        else:
            from icdcoder.coders import Coder

            self.coder = Coder.load(s.model, trust_pickle=s.trust_pickle)
            self._run = self._predict

    def _code(self, notes) -> list[dict[str, Any]]:
        s, rows = self.spec, []
        for c in self.pipeline.code(notes):
            c.codes = ([x for x in c.codes if x.suggested] if s.suggested_only else c.codes)[: s.limit]
            rows.append(c.model_dump(mode="json"))
        return rows

    def _predict(self, notes) -> list[dict[str, Any]]:
        return [p.model_dump(mode="json") for p in self.coder.predict(notes)]

    def run(self, shard: Shard | dict[str, Any], out: str | Path) -> dict[str, Any]:
        """Code one shard into ``out`` and mark it done; returns its counts."""
        shard = shard if isinstance(shard, Shard) else Shard(**shard)
        out, s = Path(out), self.spec
        start = time.perf_counter()
        coded: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        pending = []
        for row in read_shard(shard, id_field=s.id_field, text_field=s.text_field):
            if row.note is None:
                errors.append({"source": row.source, "line": row.line, "id": row.id, "error": row.error})
            else:
                pending.append(row)
        for i in range(0, len(pending), s.batch_size):
            chunk = pending[i:i + s.batch_size]
            try:
                coded.extend(self._run([r.note for r in chunk]))
            except Exception as e:  # noqa: BLE001 - one bad note must not lose the shard: retry one by one
                for r in chunk:
                    try:
                        coded.extend(self._run([r.note]))
                    except Exception as e1:  # noqa: BLE001
                        errors.append({"source": r.source, "line": r.line, "id": r.id,
                                       "error": f"coding failed: {type(e1).__name__}: {e1}"[:500]})
                del e
        write_rows(out / "coded" / f"{shard.name}.{s.output_format}", coded, s.output_format, s.mode)
        write_rows(out / "errors" / f"{shard.name}.jsonl", errors, "jsonl", s.mode)
        summary = {"shard": shard.index, "source": shard.path, "rows_in": shard.rows, "coded": len(coded),
                   "errors": len(errors), "seconds": round(time.perf_counter() - start, 3)}
        write_json(out / "done" / f"{shard.name}.json", summary)
        return summary


def write_rows(path: Path, rows: list[dict[str, Any]], fmt: str, mode: str) -> None:
    if fmt == "jsonl":
        with atomic_write(path) as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from icdcoder.batch.schema import schema_for

    table = pa.Table.from_pylist(rows, schema=schema_for(mode))
    with atomic_write(path, "wb", encoding=None) as fh:
        pq.write_table(table, fh)


@dataclass
class JobResult:
    out: Path
    shards: int
    skipped: int                 # finished by an earlier run
    coded: int
    errors: int
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)


def _job_record(spec: JobSpec, source: str | Path, shards: list[Shard], rows_per_shard: int) -> dict[str, Any]:
    keep = {k: v for k, v in spec.to_dict().items() if k not in ("batch_size",)}  # batch size may change on rerun
    return {"version": JOB_VERSION, "input": str(source), "rows_per_shard": rows_per_shard, "spec": keep,
            "shards": [s.to_dict() for s in shards]}


def prepare_job(spec: JobSpec, source: str | Path, out: str | Path, rows_per_shard: int
                ) -> tuple[list[Shard], list[Shard]]:
    """Plan the shards, check that ``out`` holds this job or nothing, and return (all, still to do)."""
    out = Path(out)
    shards = plan_shards(source, rows_per_shard)
    record = _job_record(spec, source, shards, rows_per_shard)
    job_file = out / "job.json"
    if job_file.exists():
        old = json.loads(job_file.read_text(encoding="utf-8"))
        if old != record:
            raise IcdcoderError(f"{out} holds another batch job (different input, model, options or input files "
                                "changed since); use a new --out or delete the folder")
    elif out.exists() and any(out.iterdir()):
        raise IcdcoderError(f"{out} exists and is not a batch job folder; use a new --out")
    else:
        write_json(job_file, record)
    todo = [s for s in shards if not _is_done(out, s)]
    _remove_stale_temp_files(out)
    return shards, todo


def _is_done(out: Path, shard: Shard) -> bool:
    done = out / "done" / f"{shard.name}.json"
    if not done.exists():
        return False
    try:
        rec = json.loads(done.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return rec.get("shard") == shard.index and (out / "errors" / f"{shard.name}.jsonl").exists()


def _remove_stale_temp_files(out: Path) -> None:
    """A kill during a write leaves ``.part-N.*.tmp`` files (atomic_write's staging): never outputs."""
    for sub in ("coded", "errors", "done"):
        for tmp in (out / sub).glob(".*.tmp") if (out / sub).is_dir() else ():
            tmp.unlink(missing_ok=True)


def write_manifest(out: Path, spec: JobSpec, shards: list[Shard], engine: str, workers: int,
                   seconds: float) -> dict[str, Any]:
    per_shard = [json.loads((out / "done" / f"{s.name}.json").read_text(encoding="utf-8")) for s in shards]
    manifest = {
        "model": spec.model, "mode": spec.mode, "format": spec.output_format, "engine": engine, "workers": workers,
        "shards": len(shards), "rows_in": sum(s.rows for s in shards),
        "coded": sum(p["coded"] for p in per_shard), "errors": sum(p["errors"] for p in per_shard),
        "seconds_last_run": round(seconds, 2),
        "files": [{"coded": f"coded/{s.name}.{spec.output_format}", "errors": f"errors/{s.name}.jsonl",
                   "source": s.path, "first_line": s.first_line, "rows_in": s.rows,
                   "coded_rows": p["coded"], "error_rows": p["errors"]} for s, p in zip(shards, per_shard)],
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def run_job(spec: JobSpec, source: str | Path, out: str | Path, *, engine: str = "local", rows_per_shard: int = 1000,
            workers: int | None = None, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
            progress: Callable[[dict[str, Any]], None] | None = None,
            planned: tuple[list[Shard], list[Shard]] | None = None) -> JobResult:
    """Code every row of ``source`` into ``out`` (see the module docstring); resumes a killed job.
    ``planned``: what :func:`prepare_job` returned for these arguments, when the caller already ran it
    (planning reads every input file through)."""
    out = Path(out)
    start = time.perf_counter()
    shards, todo = planned if planned is not None else prepare_job(spec, source, out, rows_per_shard)
    if engine == "local":
        summaries: Iterator[dict[str, Any]] = _run_local(spec, todo, out)
        workers = 1
    elif engine == "ray":
        from icdcoder.batch.ray_engine import run_on_ray

        workers = workers or _default_workers(num_cpus, num_gpus)
        summaries = run_on_ray(spec, todo, out, workers=workers, address=address, num_cpus=num_cpus,
                               num_gpus=num_gpus)
    else:
        raise IcdcoderError(f"unknown engine {engine!r}; use local or ray")
    for summary in summaries:
        if progress is not None:
            progress(summary)
    seconds = time.perf_counter() - start
    manifest = write_manifest(out, spec, shards, engine, workers, seconds)
    return JobResult(out, len(shards), len(shards) - len(todo), manifest["coded"], manifest["errors"], seconds,
                     manifest)


def _run_local(spec: JobSpec, shards: list[Shard], out: Path) -> Iterator[dict[str, Any]]:
    if not shards:
        return
    worker = ShardWorker(spec)
    for shard in shards:
        yield worker.run(shard, out)


def _default_workers(num_cpus: float, num_gpus: float) -> int:
    import os

    if num_gpus > 0:
        try:
            import torch

            return max(1, int(torch.cuda.device_count() / num_gpus))
        except ImportError:
            return 1
    return max(1, int((os.cpu_count() or 1) / max(num_cpus, 1e-9)))


def iter_coded(out: str | Path) -> Iterator[dict[str, Any]]:
    """The coded rows of a finished job in input order (JSONL or Parquet shards)."""
    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for f in manifest["files"]:
        path = out / f["coded"]
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(path).to_pylist()
        else:
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    yield json.loads(line)
