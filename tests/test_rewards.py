"""GRPO rewards: hand-computed values on string and chat-message completions."""

import pytest

from icdcoder.training.rewards import (
    combine,
    completion_text,
    f1_reward,
    fbeta_reward,
    format_reward,
    invalid_code_penalty,
    rule_penalty,
    set_f1,
    set_fbeta,
    weighted_f1_reward,
)


def chat(text):
    return [{"role": "assistant", "content": text}]


# --- completion_text -----------------------------------------------------------------------------------
def test_completion_text_forms():
    assert completion_text("<code>I10</code>") == "<code>I10</code>"
    assert completion_text(chat("<code>I10</code>")) == "<code>I10</code>"
    assert completion_text({"role": "assistant", "content": "x"}) == "x"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "<code>"}, {"type": "text", "text": "I10"}]}]
    assert completion_text(parts) == "<code>I10"
    assert completion_text([{"role": "user", "content": "prompt"}, {"role": "assistant", "content": "a"}]) == "a"
    assert completion_text(None) == "" and completion_text([]) == ""


# --- set metrics ---------------------------------------------------------------------------------------
def test_set_f1_and_fbeta_hand_computed():
    assert set_f1({"A", "B"}, {"B", "C"}) == pytest.approx(0.5)
    assert set_fbeta({"A", "B"}, {"B", "C"}, 2) == pytest.approx(0.5)  # P = R = 1/2, so every F is 1/2
    # P = 1, R = 1/2: F1 = 2/3; F2 = 5*1 / (5*1 + 4*1 + 0) = 5/9; F0.5 = 1.25 / (1.25 + 0.25) = 5/6
    assert set_f1({"A"}, {"A", "B"}) == pytest.approx(2 / 3)
    assert set_fbeta({"A"}, {"A", "B"}, 2) == pytest.approx(5 / 9)
    assert set_fbeta({"A"}, {"A", "B"}, 0.5) == pytest.approx(5 / 6)


def test_set_f1_empty_sets():
    assert set_f1(set(), set()) == 1.0
    assert set_f1({"A"}, set()) == 0.0 and set_f1(set(), {"A"}) == 0.0
    assert set_f1(["A", "A"], ["A"]) == 1.0  # collections are read as sets


@pytest.mark.parametrize("beta", [0, -1, float("inf"), float("nan")])
def test_set_fbeta_rejects_bad_beta(beta):
    with pytest.raises(ValueError):
        set_fbeta({"A"}, {"A"}, beta)


# --- f1 / fbeta ----------------------------------------------------------------------------------------
def test_f1_reward_strings_and_messages():
    completions = [
        "<code>I10, E11.9</code>",            # {I10, E11.9} vs {E11.9, I50.9}: 1/2
        chat("<code>e119; i509</code>"),      # exact after normalisation: 1
        "I cannot tell.",                      # no codes, no gold: 1 (the format reward punishes the form)
        chat("<code>Q99.99</code>"),          # made-up code never matches: 0
        "<code>I10</code>",                   # gold written undotted is normalised too: 1
    ]
    gold = [["E11.9", "I50.9"], ["E11.9", "I50.9"], [], ["I10"], ["i10"]]
    assert f1_reward(["p"] * 5, completions, gold_codes=gold) == pytest.approx([0.5, 1.0, 1.0, 0.0, 1.0])


def test_f1_reward_uses_the_system_column():
    completions = ["<code>3893</code>", "<code>4280</code>"]
    gold = [["38.93"], ["428.0"]]
    assert f1_reward([None] * 2, completions, gold_codes=gold, system=["icd9pcs", "icd9cm"]) == [1.0, 1.0]
    # without the column "3893" reads as the ICD-9 diagnosis 389.3
    assert f1_reward([None] * 2, completions, gold_codes=gold) == [0.0, 1.0]


def test_reward_column_errors():
    with pytest.raises(TypeError):
        f1_reward(["p"], ["<code>I10</code>"])
    with pytest.raises(ValueError):
        f1_reward(["p"], ["<code>I10</code>"], gold_codes=[["I10"], ["E11.9"]])
    with pytest.raises(TypeError):
        f1_reward(["p"], ["<code>I10</code>"], gold_codes=["I10"])


def test_fbeta_reward_named_and_hand_computed():
    f2 = fbeta_reward(2)
    assert f2.__name__ == "f2_reward" and fbeta_reward(0.5).__name__ == "f0.5_reward"
    completions = ["<code>I10</code>", chat("<code>I10, E11.9</code>"), "<code>I10, E11.9</code>"]
    gold = [["I10", "E11.9"], ["E11.9", "I50.9"], ["I10", "E11.9"]]
    # F2: P=1,R=1/2 -> 5/9;  P=R=1/2 -> 1/2;  exact -> 1
    assert f2(["p"] * 3, completions, gold_codes=gold, trainer_state=None) == pytest.approx([5 / 9, 0.5, 1.0])
    with pytest.raises(ValueError):
        fbeta_reward(0)


def test_fbeta_reward_system_override():
    f1_icd9 = fbeta_reward(1, system="icd9pcs")
    assert f1_icd9(["p"], ["<code>3893</code>"], gold_codes=[["3893"]]) == [1.0]


# --- weighted f1 ---------------------------------------------------------------------------------------
def test_weighted_f1_hand_computed():
    reward = weighted_f1_reward({"I10": 1.0, "e119": 3.0, "I50.9": 2.0}, default=1.0)
    assert reward.__name__ == "weighted_f1_reward"
    completions = [
        "<code>I10, E11.9</code>",             # W(pred)=4, W(gold)=5, W(hit)=3: P=3/4, R=3/5, F1=2/3
        chat("<code>E11.9, J18.9, I10</code>"),  # W(pred)=3+1+1=5, W(gold)=5, W(hit)=3: 3/5
        "<code>I50.9</code>",                  # W(pred)=2, W(gold)=2+3=5, hit 2: 2*2/7
        "<code></code>",                       # both empty: 1
    ]
    gold = [["E11.9", "I50.9"], ["E11.9", "I50.9"], ["I50.9", "E11.9"], []]
    assert reward(["p"] * 4, completions, gold_codes=gold) == pytest.approx([2 / 3, 3 / 5, 4 / 7, 1.0])
    # with unit weights it is the plain F1
    plain = weighted_f1_reward({})
    assert plain(["p"] * 4, completions, gold_codes=gold) == pytest.approx(f1_reward(None, completions, gold))


def test_weighted_f1_zero_weights_and_bad_weights():
    reward = weighted_f1_reward({"I10": 0.0}, default=0.0)
    assert reward(["p"] * 2, ["<code>I10</code>", "<code>I10</code>"], gold_codes=[["I10"], ["E11.9"]]) == [1.0, 0.0]
    with pytest.raises(ValueError):
        weighted_f1_reward({"I10": -1.0})


# --- invalid code penalty ------------------------------------------------------------------------------
def test_invalid_code_penalty_with_label_space():
    penalty = invalid_code_penalty({"I10", "E11.9"}, penalty=0.25)
    assert penalty.__name__ == "invalid_code_penalty"
    completions = [
        "<code>I10, E11.9</code>",                               # none invalid
        chat("<code>I10, I50.9, Q99.9</code>"),                  # 2 invalid: -0.5
        "<code>A00.1, A00.2, A00.3, A00.4, A00.5, I10</code>",   # 5 invalid: -1.25 floored at -1
        "<code>Q99.9, q999</code>",                               # one distinct invalid code: -0.25
        "no answer at all",                                       # nothing invalid: 0
    ]
    assert penalty(["p"] * 5, completions) == pytest.approx([0.0, -0.5, -1.0, -0.25, 0.0])


def test_invalid_code_penalty_with_ontology():
    penalty = invalid_code_penalty(None)
    assert penalty(["p"] * 2, ["<code>I50.9, I50.99, ZZZ.9</code>", chat("<code>I50.9</code>")]) == pytest.approx(
        [-0.2, 0.0])
    with pytest.raises(ValueError):
        invalid_code_penalty(None, penalty=-0.1)


# --- format --------------------------------------------------------------------------------------------
def test_format_reward():
    completions = [
        "<code>I10, E11.9</code>",
        chat("Findings reviewed.\n<code>I10</code>"),   # text around one clean block is fine
        "<code></code>",
        "I10, E11.9",                                     # no tags
        "<code>I10",                                      # unclosed
        "<code>I10</code><code>E11.9</code>",            # two blocks
        chat("<code>I10 hypertension</code>"),          # junk word
        "<code>I10, i10</code>",                          # duplicate
        "",
    ]
    assert format_reward(["p"] * 9, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


# --- combine -------------------------------------------------------------------------------------------
def test_combine_pairs_functions_and_weights():
    f2 = fbeta_reward(2)
    funcs, weights = combine((f1_reward, 1), (f2, 0.5), (format_reward, 0.2))
    assert funcs == [f1_reward, f2, format_reward]
    assert weights == [1.0, 0.5, 0.2] and all(isinstance(w, float) for w in weights)


@pytest.mark.parametrize("args, error", [
    ((), ValueError),
    ((f1_reward,), TypeError),
    (((f1_reward, 1.0, 2.0),), TypeError),
    ((("f1", 1.0),), TypeError),
    (((f1_reward, float("nan")),), ValueError),
    (((f1_reward, "1"),), ValueError),
])
def test_combine_rejects_bad_pairs(args, error):
    with pytest.raises(error):
        combine(*args)


# --- rule penalty: the rule engine's checks as a reward ----------------------------------------------
def test_rule_penalty_counts_each_violation():
    penalty = rule_penalty(penalty=0.25)
    assert penalty.__name__ == "rule_penalty"
    completions = [
        "<code>E11.9, I10</code>",             # clean: 0
        "<code>E11.9, E10.9</code>",           # Excludes1 pair: -0.25
        chat("<code>K21, K21.9, I50</code>"),  # parent with child, K21 and I50 categories: -0.75
        "<code>Q99.99, I10</code>",            # not a code: -0.25
        "<code>A00</code> junk <code>",        # A00 is a category: -0.25
    ]
    assert penalty(["p"] * 5, completions) == pytest.approx([0.0, -0.25, -0.75, -0.25, -0.25])


def test_rule_penalty_respects_the_config_and_the_system_column():
    from icdcoder.rules import RuleConfig

    lenient = rule_penalty(RuleConfig(billable="off", excludes1=False), penalty=0.5)
    assert lenient(["p"], ["<code>K21, E11.9, E10.9</code>"]) == [0.0]
    icd9 = rule_penalty(penalty=0.5)
    assert icd9(["p"] * 2, ["<code>250.00, 401.9</code>", "<code>250, 999.99</code>"],
                system=["icd9cm", "icd9cm"]) == pytest.approx([0.0, -1.0])
    with pytest.raises(ValueError):
        rule_penalty(penalty=-1)
