"""Progress of long jobs: plain timed lines on stderr when it is not a terminal (pytest's capture is not),
a rich bar when it is, silence with ICDCODER_PROGRESS=off; wired into PLM-ICD, TF-IDF and the TRL stages."""

from __future__ import annotations

import io
import re

import pytest

from icdcoder.progress import ENV_INTERVAL, ENV_MODE, Progress, _Bars, format_duration, progress, track

LINE = re.compile(r"^\[(?P<desc>[^\]]+)\] (?:(?P<event>start|done|stopped) )?(?P<unit>\w+) (?P<done>[\d,]+)"
                  r"(?:/(?P<total>[\d,]+))?")


class Clock:
    """A fake monotonic clock: tests move time instead of sleeping."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv(ENV_MODE, raising=False)
    monkeypatch.delenv(ENV_INTERVAL, raising=False)


def lines_of(text: str, desc: str | None = None) -> list[str]:
    return [ln for ln in text.splitlines() if LINE.match(ln) and (desc is None or ln.startswith(f"[{desc}]"))]


def test_plain_lines_carry_step_total_metrics_elapsed_and_eta():
    clock, out = Clock(), io.StringIO()
    with progress("plm_icd fit", total=4, stream=out, interval=0, clock=clock) as p:
        for loss in (0.5, 0.25, 0.125, 0.0625):
            clock.t += 10
            p.update(loss=loss)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[plm_icd fit] start step 0/4"
    assert lines[1] == "[plm_icd fit] step 1/4 (25%) loss 0.5 elapsed 10s eta 30s"
    assert lines[2] == "[plm_icd fit] step 2/4 (50%) loss 0.25 elapsed 20s eta 20s"
    assert lines[-1] == "[plm_icd fit] done step 4/4 (100%) loss 0.0625 elapsed 40s (0.1 step/s)"
    assert len(lines) == 6  # start, one per update (interval 0), done


def test_the_interval_is_respected_with_a_fake_clock():
    clock, out = Clock(), io.StringIO()
    with Progress("tfidf fit", 1000, unit="code", stream=out, interval=30, clock=clock) as p:
        for _ in range(1000):
            clock.t += 0.125  # 125 s in all
            p.update()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[tfidf fit] start") and lines[-1].startswith("[tfidf fit] done code 1,000/1,000")
    middle = lines[1:-1]
    assert len(middle) == 4  # at 30, 60, 90 and 120 s, not 1000 lines
    assert middle[0] == "[tfidf fit] code 240/1,000 (24%) elapsed 30s eta 1m35s"


def test_env_interval_and_off(monkeypatch):
    monkeypatch.setenv(ENV_INTERVAL, "0")
    out = io.StringIO()
    for _ in track(range(3), "prep", stream=out, clock=Clock()):
        pass
    assert [LINE.match(ln)["done"] for ln in out.getvalue().splitlines()] == ["0", "1", "2", "3", "3"]
    monkeypatch.setenv(ENV_MODE, "off")
    quiet = io.StringIO()
    with Progress("plm_icd fit", 3, stream=quiet, interval=0) as p:
        p.update(loss=1.0)
    assert list(track([1, 2], "x", stream=quiet, interval=0)) == [1, 2]
    assert quiet.getvalue() == ""
    # disabled by the caller: also silent
    monkeypatch.delenv(ENV_MODE)
    with Progress("x", 3, stream=quiet, interval=0, enabled=False) as p:
        p.update()
    assert quiet.getvalue() == ""


def test_defaults_write_to_sys_stderr_unbuffered(capsys):
    with Progress("job", 2, interval=0) as p:
        p.update(loss=0.3)
        assert "[job] step 1/2 (50%) loss 0.3" in capsys.readouterr().err  # there before the job ends
    assert "[job] done step 1/2" in capsys.readouterr().err


def test_failure_writes_a_stopped_line_and_resumed_jobs_estimate_from_this_run():
    clock, out = Clock(), io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress("plm_icd fit", 10, initial=6, stream=out, interval=0, clock=clock) as p:
            clock.t += 5
            p.update()  # 1 step in 5 s, 3 left: eta 15 s whatever came before
            raise RuntimeError("boom")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[plm_icd fit] start step 6/10"
    assert lines[1] == "[plm_icd fit] step 7/10 (70%) elapsed 5.0s eta 15s"
    assert lines[-1].startswith("[plm_icd fit] stopped step 7/10")


def test_a_terminal_gets_one_shared_rich_display_not_lines():
    tty = Tty()
    with Progress("outer", 2, stream=tty) as outer:
        with Progress("inner", 3, stream=tty, unit="note") as inner:  # nested: joins the same display
            assert _Bars.users == 2
            inner.update(3)
        outer.update(2, loss=0.1)
        assert _Bars.users == 1
    assert _Bars.display is None and _Bars.users == 0
    assert not lines_of(tty.getvalue())
    # an outer loop that leaves the terminal to its inner jobs draws nothing there
    quiet = Tty()
    with Progress("study", 2, stream=quiet, bar=False) as p:
        p.update()
    assert quiet.getvalue() == "" and _Bars.display is None


def test_format_duration():
    assert [format_duration(s) for s in (0.42, 42, 130, 845, 3900)] == ["0.4s", "42s", "2m10s", "14m05s", "1h05m"]


def test_tfidf_fit_reports_codes(capsys, monkeypatch):
    from icdcoder.coders.tfidf import TfidfCoder
    from icdcoder.data.note import Note

    monkeypatch.setenv(ENV_INTERVAL, "0")
    notes = [Note.build(f"n{i}", f"patient with {w} today", [(c, "icd10cm")])
             for i, (w, c) in enumerate([("pneumonia", "J18.9"), ("diabetes", "E11.9"), ("hypertension", "I10")] * 2)]
    TfidfCoder(min_df=1).fit(notes)
    lines = lines_of(capsys.readouterr().err, "tfidf fit")
    assert lines[0] == "[tfidf fit] start code 0/3" and lines[-1].startswith("[tfidf fit] done code 3/3 (100%)")
    assert "[tfidf fit] code 2/3 (66%)" in "\n".join(lines)


# ------------------------------------------------------------------------------ PLM-ICD
def test_plm_icd_fit_and_predict_write_progress_lines(capsys, monkeypatch):
    pytest.importorskip("torch")
    from tests.test_plm_icd import SMALL, TRAIN  # skips when the encoder package is absent

    from icdcoder.coders.plm_icd import PlmIcdCoder

    monkeypatch.setenv(ENV_INTERVAL, "0")
    coder = PlmIcdCoder(epochs=2, **{**SMALL, "progress": True, "eval_batch_size": 4}).fit(TRAIN[:8])
    coder.predict(TRAIN[:8])
    err = capsys.readouterr().err
    fit = lines_of(err, "plm_icd fit")
    assert fit[0] == "[plm_icd fit] start step 0/4"  # 8 notes / batch 4 = 2 optimiser steps x 2 epochs
    steps = [ln for ln in fit if LINE.match(ln)["event"] is None]
    assert [LINE.match(ln)["done"] for ln in steps] == ["1", "2", "3", "4"]
    assert re.match(r"\[plm_icd fit\] step 3/4 \(75%\) epoch 2/2 loss \d+\.\d+ elapsed [\d.]+s eta [\d.]+s$", steps[2])
    assert fit[-1].startswith("[plm_icd fit] done step 4/4 (100%) epoch 2/2 loss ")
    pred = lines_of(err, "plm_icd predict")
    assert pred[0] == "[plm_icd predict] start note 0/8" and pred[-1].startswith("[plm_icd predict] done note 8/8")
    # progress=False (the tests' SMALL setting) stays silent
    PlmIcdCoder(epochs=1, **SMALL).fit(TRAIN[:4])
    assert not lines_of(capsys.readouterr().err)


# ------------------------------------------------------------------------------ TRL stages
def test_trl_callback_reports_steps_loss_and_reward():
    pytest.importorskip("transformers")
    from transformers import TrainerControl, TrainerState

    from icdcoder.training.trl_common import progress_callback

    clock, out = Clock(), io.StringIO()
    cb = progress_callback("grpo train", stream=out, interval=0, clock=clock)
    state, control = TrainerState(max_steps=4, global_step=0), TrainerControl()
    cb.on_train_begin(None, state, control)
    for step in range(1, 5):
        clock.t += 3
        state.global_step = step
        control.should_log = step % 2 == 0  # logging_steps 2: the line waits for the step's log
        cb.on_step_end(None, state, control)
        if control.should_log:
            cb.on_log(None, state, control, logs={"loss": 0.5 / step, "reward": 0.25 * step, "learning_rate": 1e-4})
    cb.on_log(None, state, control, logs={"train_runtime": 12.0, "train_loss": 0.3})  # the summary: no line
    cb.on_train_end(None, state, control)
    lines = out.getvalue().splitlines()
    assert lines == ["[grpo train] start step 0/4",
                     "[grpo train] step 1/4 (25%) elapsed 3.0s eta 9.0s",
                     "[grpo train] step 2/4 (50%) loss 0.25 reward 0.5 elapsed 6.0s eta 6.0s",
                     "[grpo train] step 3/4 (75%) loss 0.25 reward 0.5 elapsed 9.0s eta 3.0s",
                     "[grpo train] step 4/4 (100%) loss 0.125 reward 1 elapsed 12s eta 0.0s",
                     "[grpo train] done step 4/4 (100%) loss 0.125 reward 1 elapsed 12s (0.333 step/s)"]


def test_trl_defaults_turn_transformers_bars_off():
    pytest.importorskip("torch")
    from icdcoder.training.trl_common import TrainSettings, base_args

    assert base_args(TrainSettings(), "out", 13)["disable_tqdm"] is True
    assert base_args(TrainSettings(trainer_args={"disable_tqdm": False}), "out", 13)["disable_tqdm"] is False


def test_a_tiny_sft_run_writes_progress_lines_not_bars(capsys, monkeypatch, tmp_path):
    pytest.importorskip("trl")
    from tests.test_generative import GEN, PROMPT, SFT, TINY

    from icdcoder.coders import coder_class
    from icdcoder.data.synth import SynthConfig, generate_synthetic

    monkeypatch.setenv(ENV_INTERVAL, "0")
    train = [n for split, n in generate_synthetic(SynthConfig(n_train=12, n_val=2, n_test=2, seed=5))
             if split == "train"]
    coder = coder_class("llm_sft")(tiny={**TINY, "pretrain_steps": 2}, prompt=PROMPT,
                                   generation={**GEN, "batch_size": 4},
                                   sft={**SFT, "max_steps": 2, "save_steps": 100}, checkpoint_dir=str(tmp_path))
    coder.fit(train)
    coder.predict(train[:8])
    captured = capsys.readouterr()
    sft = lines_of(captured.err, "sft train")
    assert sft[0] == "[sft train] start step 0/2"
    assert re.match(r"\[sft train\] step 1/2 \(50%\) loss \d+(\.\d+)? elapsed .* eta ", sft[1])
    assert sft[-1].startswith("[sft train] done step 2/2 (100%) loss ")
    assert not re.search(r"\d/2 \[\d\d:\d\d", captured.err)  # no tqdm bar of transformers' trainer
    assert "examples/s]" not in captured.err  # nor of datasets, preparing TRL's dataset
    assert "{'loss'" not in captured.out  # nor its log printer
    gen = lines_of(captured.err, "generate")
    assert gen[0] == "[generate] start note 0/8" and gen[-1].startswith("[generate] done note 8/8")
