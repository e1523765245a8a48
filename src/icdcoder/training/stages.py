"""The trained generative coders: SFT, GRPO and PHI, each under the common coder interface.

Each stage starts from ``init_from`` (the previous stage's saved coder) when given, and otherwise
runs the earlier stages itself first, so one config can train the whole chain. Every stage writes
a ``final`` model under ``checkpoint_dir/<stage>`` when it finishes: re-running after a crash skips
finished stages and resumes an unfinished one from its newest TRL checkpoint. A finished stage deletes
its checkpoints (weights plus optimizer state) unless its settings say ``keep_checkpoints: true``.

Parameters on top of :class:`~icdcoder.coders.generative.coder.GenerativeCoder`'s::

    sft:  {epochs, batch_size, lr, lora: {r, alpha, ...}, trainer_args: {...}}       # TrainSettings
    grpo: {num_generations, max_completion_length, temperature, beta, rewards: {f1: 1.0, format: 0.1},
           max_notes, epochs, batch_size, lr, lora, trainer_args}                       # GRPOSettings
    phi:  {rounds, hint_prob, max_hint_codes, max_notes_per_round, grpo: {...}}        # PhiSettings
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from icdcoder.coders.base import register
from icdcoder.coders.generative.coder import GenerativeCoder
from icdcoder.data.note import Note
from icdcoder.distributed import main_writes_first
from icdcoder.errors import IcdcoderError
from icdcoder.io import write_json
from icdcoder.progress import hf_bars_off_terminal
from icdcoder.training import rewards as R
from icdcoder.training.grpo import GRPOSettings, run_grpo
from icdcoder.training.phi import PhiSettings, build_round, code_recall, code_weights, missed_codes
from icdcoder.training.sft import run_sft
from icdcoder.training.trl_common import TrainSettings, prune_checkpoints


def reward_functions(spec: dict[str, float], coder: GenerativeCoder) -> tuple[list[Callable], list[float]]:
    """Reward terms named in a config (``{name: weight}``) as plain functions plus their weights.

    ``f1`` (sample-level F1 against the gold set), ``fbeta:B``, ``weighted_f1`` (codes weighted by
    1/sqrt(training frequency)), ``format`` (one clean answer block), ``invalid`` (penalty per code
    outside the valid set), ``rules`` (penalty per rule-engine violation: invalid, category, parent with
    child, Excludes1), ``evidence`` (share of codes whose quote is found in the note; evidence mode).
    """
    funcs, weights = [], []
    for name, w in spec.items():
        if name == "f1":
            f = R.f1_reward
        elif name.startswith("fbeta:"):
            f = R.fbeta_reward(float(name.split(":", 1)[1]))
        elif name == "weighted_f1":
            f = R.weighted_f1_reward({c: 1 / max(n, 1) ** 0.5 for c, n in coder.label_space.items()})
        elif name == "format":
            f = R.format_reward
        elif name == "evidence":
            f = R.evidence_reward
        elif name == "rules":
            from icdcoder.coders.generative.prompts import code_system

            f = R.rule_penalty(system=code_system(coder.prompt_cfg.system))
        elif name == "invalid":
            valid = coder.validity()
            f = R.invalid_code_penalty(valid if valid is not None else _ontology_valid(coder.prompt_cfg.system))
        else:
            raise IcdcoderError(f"unknown reward {name!r}; known: f1, fbeta:B, weighted_f1, format, invalid, rules, "
                               "evidence")
        funcs.append(f)
        weights.append(float(w))
    return funcs, weights


def _ontology_valid(system: str) -> Callable[[str], bool]:
    from icdcoder.coders.generative.prompts import code_system
    from icdcoder.ontology import get_ontology

    onto, single = get_ontology(), code_system(system)
    if single is None:  # mixed label space: valid in any system
        return lambda c: any(onto.exists(c, s) for s in ("icd9cm", "icd9pcs", "icd10cm", "icd10pcs"))
    return lambda c: onto.exists(c, single)


class _Staged(GenerativeCoder):
    """Runs stages in order, skipping those with a finished model under ``checkpoint_dir``."""

    stages: tuple[str, ...] = ()
    trains_lm = True
    distributed_fit = True  # under a launcher every rank trains (TRL's DDP); see icdcoder.distributed

    def fit(self, train: Sequence[Note], val: Sequence[Note] | None = None) -> "_Staged":
        self._prepare(train)
        todo = self.stages if not self.params.get("init_from") else self.stages[-1:]
        for stage in todo:
            final = self._work_dir() / stage / "final"
            record = final / "stage.json"
            if record.exists():  # written last: the stage finished
                self._log(f"{stage}: finished earlier, reusing {final}")
                self.lm_path, self._lm, self._backend, self.owns_lm = str(final), None, None, True
                self.history.append({**json.loads(record.read_text(encoding="utf-8")), "reused": True})
                continue
            start = time.perf_counter()
            info = getattr(self, f"_{stage}")(train, self._work_dir() / stage)
            model, tok = self.lm()
            self.history.append({"stage": stage, "seconds": round(time.perf_counter() - start, 2), **info})
            with main_writes_first() as main:  # several ranks hold the same weights after training: rank 0 saves
                if main:
                    with hf_bars_off_terminal():
                        model.save_pretrained(final)
                    tok.save_pretrained(final)
                    write_json(record, self.history[-1])
                    if not self._settings_of(stage).keep_checkpoints:
                        prune_checkpoints(self._work_dir() / stage)
            self.lm_path, self.owns_lm = str(final), True
        return self

    def _settings_of(self, stage: str) -> TrainSettings:
        """The training settings a stage runs under (PHI's rounds are GRPO runs, with ``phi.grpo`` on top)."""
        if stage == "sft":
            return TrainSettings.from_dict(self.params.get("sft"))
        return self._grpo_settings((self.params.get("phi") or {}).get("grpo") if stage == "phi" else None)

    def _sft(self, train: Sequence[Note], out: Path) -> dict[str, Any]:
        settings = TrainSettings.from_dict(self.params.get("sft"))
        # training prompts never show a note its own codes: few-shot examples and retrieved candidates leave the
        # note out, and candidates_from gives its out-of-fold ranking (as for a new note at prediction)
        rows = [{"prompt": self.messages(n, exclude_self=True), "completion": self.answer(n)} for n in train]
        model, tok = self.lm()
        self._log(f"SFT on {len(rows):,} notes")
        model, info = run_sft(model.train(), tok, rows, settings, out, seed=self.seed)
        self._lm, self._backend = (model, tok), None
        return info

    def _grpo_rows(self, notes: Sequence[Note], hints: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        hints = hints or {}
        return [{"prompt": self.messages(n, hint=hints.get(n.id, ()), exclude_self=True), "gold_codes": list(n.codes),
                 "note_text": n.text} for n in notes]

    def _grpo_settings(self, extra: dict | None = None) -> GRPOSettings:
        d = dict(self.params.get("grpo") or {})
        d.pop("max_notes", None)
        d.update(extra or {})
        return GRPOSettings.from_dict(d)

    def _grpo(self, train: Sequence[Note], out: Path) -> dict[str, Any]:
        settings = self._grpo_settings()
        notes = list(train)
        cap = (self.params.get("grpo") or {}).get("max_notes")
        if cap is not None and cap < len(notes):
            notes = random.Random(self.seed).sample(notes, int(cap))
        funcs, weights = reward_functions(settings.rewards, self)
        model, tok = self.lm()
        self._log(f"GRPO on {len(notes):,} notes, {settings.num_generations} answers each")
        model, info = run_grpo(model.train(), tok, self._grpo_rows(notes), settings, out, funcs, weights,
                               seed=self.seed)
        self._lm, self._backend = (model, tok), None
        return info

    def _phi(self, train: Sequence[Note], out: Path) -> dict[str, Any]:
        phi = dict(self.params.get("phi") or {})
        grpo_over = phi.pop("grpo", {})
        settings = PhiSettings(**phi)
        by_id = {n.id: n for n in train}
        rng = random.Random(self.seed)
        rounds = []
        for r in range(1, settings.rounds + 1):
            scan = list(train)
            if settings.scan_notes is not None and settings.scan_notes < len(scan):
                scan = rng.sample(scan, int(settings.scan_notes))
            sets, _ = self.generate_sets(scan, exclude_self=True)  # hint-free, greedy
            predicted = {n.id: s[0] for n, s in zip(scan, sets)}
            gold = {n.id: list(n.codes) for n in scan}
            missed = missed_codes(gold, predicted)
            recall = code_recall(gold, predicted)
            weights = code_weights(self.label_space, recall, floor=settings.recall_floor, cap=settings.cap)
            pool = build_round(missed, weights, rng, settings)
            n_missed = sum(len(v) for v in missed.values())
            stat = {"round": r, "scanned": len(scan), "notes_missing": len(missed), "codes_missed": n_missed,
                    "pool": len(pool),
                    "hinted": sum(bool(h) for _, h in pool)}
            rounds.append(stat)
            self._log(f"PHI round {r}: {len(missed):,} notes still miss {n_missed:,} gold codes; "
                      f"training on {len(pool):,} ({stat['hinted']:,} with hints)")
            if not pool:
                break
            settings_r = self._grpo_settings({"epochs": 1.0, "max_steps": -1, **grpo_over})
            funcs, wts = reward_functions(settings_r.rewards, self)
            rows = self._grpo_rows([by_id[i] for i, _ in pool], {i: h for i, h in pool if h})
            model, tok = self.lm()
            model, info = run_grpo(model.train(), tok, rows, settings_r, out / f"round-{r}", funcs, wts,
                                   seed=self.seed + r, desc=f"phi train round {r}/{settings.rounds}")
            self._lm, self._backend = (model, tok), None
            stat["global_step"] = info["global_step"]
            counted = [r["num_tokens"] for r in info.get("log", []) if "num_tokens" in r]
            if counted:
                stat["num_tokens"] = int(counted[-1])
        return {"rounds": rounds}


@register("llm_sft")
class SFTCoder(_Staged):
    """Supervised fine-tuning on (note, gold answer) pairs."""

    stages = ("sft",)
    stage_options = ("sft",)


@register("llm_grpo")
class GRPOCoder(_Staged):
    """SFT, then GRPO with set-level rewards."""

    stages = ("sft", "grpo")
    stage_options = ("sft", "grpo")


@register("llm_phi")
class PhiCoder(_Staged):
    """SFT, GRPO, then the PHI missed-code curriculum."""

    stages = ("sft", "grpo", "phi")
    stage_options = ("sft", "grpo", "phi")
