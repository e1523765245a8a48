"""Constrained decoding: the grammar on hand-made strings, then a tiny random LM that must obey it."""

from __future__ import annotations

import random
import re

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from icdcoder.coders.generative.constrained import (  # noqa: E402
    CodeConstraintProcessor,
    CodeGrammar,
    constrained_processor,
    token_surfaces,
)

CODES = ["I10", "E11", "E11.9", "J45.909", "N18.3", "E78.5", "K21.9", "Z79.4", "I50.9", "F32.9", "R07.9"]
ALLOWED = ["E11", "E11.9", "I10", "K21.9", "Z79.4"]  # a label space narrower than what the tokenizer saw
ANSWER = re.compile(r"<code>((?:[^,<]+)(?:, [^,<]+)*)?</code>")


# -- the grammar ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grammar() -> CodeGrammar:
    return CodeGrammar(ALLOWED)


@pytest.mark.parametrize("text", [
    "", "<", "<cod", "<code>", "<code>E", "<code>E11", "<code>E11.", "<code>E11,", "<code>E11, ",
    "<code>E11, E11.9", "<code>I10, K21.9</", "<code></", "<code></code>", "<code>E11.9, E11</code>",
])
def test_viable_prefixes(grammar, text):
    assert grammar.viable(text)


@pytest.mark.parametrize("text", [
    "x", "<code> ", "<code>X", "<code>E12", "<code>, ", "<code>E11,E11.9", "<code>E11 ,",
    "<code>I10, I10", "<code>E11, E11,", "<code>E11.9, E11.9", "<code>I10</code>x", "<code>I10</code></code>",
    "<code>I10, </code>", "<code>E11.9.", "code>",
])
def test_not_viable(grammar, text):
    assert not grammar.viable(text)


def test_complete_only_whole_sentences(grammar):
    assert grammar.complete("<code></code>")
    assert grammar.complete("<code>E11</code>")
    assert grammar.complete("<code>E11, E11.9, I10, K21.9, Z79.4</code>")
    for partial in ["", "<code>", "<code>E11", "<code>E11, ", "<code>E11</code", "<code>E11.9, I10</"]:
        assert grammar.viable(partial) and not grammar.complete(partial)


def test_all_codes_used_leaves_only_close():
    g = CodeGrammar(["A1", "B2"])
    assert g.viable("<code>A1, B2")
    assert not g.viable("<code>A1, B2,")  # no code left to follow a separator
    assert g.complete("<code>B2, A1</code>")
    assert g.next_chars(g.advance(g.start(), "<code>A1, B2")) == {",", "<"}


def test_repeats_allowed_when_asked():
    g = CodeGrammar(["A1"], unique=False)
    assert g.complete("<code>A1, A1</code>")


def test_custom_tags_and_bad_codes():
    g = CodeGrammar(["A"], open="[", close="]", sep=";")
    assert g.complete("[A]") and g.complete("[]") and not g.viable("[A;A")
    with pytest.raises(ValueError, match="separator"):
        CodeGrammar(["A, B"])
    with pytest.raises(ValueError, match="close tag"):
        CodeGrammar(["A</code>"])
    with pytest.raises(ValueError, match="empty"):
        CodeGrammar([""])


def test_empty_label_space_allows_only_the_empty_answer():
    g = CodeGrammar([])
    assert g.complete("<code></code>") and not g.viable("<code>A")


# -- a tiny byte-level BPE tokenizer and a random Qwen2 -------------------------------------------


def _training_lines() -> list[str]:
    rng = random.Random(0)
    words = ("patient admitted with chest pain history of hypertension type diabetes kidney disease "
             "reflux asthma heart failure depression on insulin discharged home stable follow up").split()
    lines = []
    for _ in range(400):
        note = " ".join(rng.choices(words, k=rng.randint(4, 12)))
        codes = rng.sample(CODES, rng.randint(0, 4))
        lines.append(f"{note}\n<code>{', '.join(codes)}</code>")
    return lines


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # No regex split: merges may then cross tag/code/separator boundaries (tokens like ", E" or
    # "9</"), the hard case for a character-level constraint.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_training_lines(), trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|pad|>", padding_side="left")


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return transformers.Qwen2ForCausalLM(config).eval()


def test_surfaces_are_decoded_text_with_spaces(tokenizer):
    surfaces = token_surfaces(tokenizer)
    spaced = [i for i, raw in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
              if raw.startswith("Ġ") and len(raw) > 1]
    assert spaced, "the tokenizer should have learned tokens that begin with a space"
    for i in spaced:
        # The raw token spells the space 'Ġ'; the surface is the real text, as decode gives it.
        assert surfaces[i].startswith(" ") and surfaces[i] == tokenizer.decode([i])
    text = "<code>I10, E11.9, K21.9</code>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert "".join(surfaces[i] for i in ids) == text
    assert any(len(surfaces[i]) > 1 and not surfaces[i].isalnum() for i in ids)  # boundary-crossing merges


def _generate(model, tokenizer, processors, *, seed: int | None, n: int = 1, max_new_tokens: int = 60):
    notes = ["patient with chest pain and hypertension\n", "diabetes on insulin\n"]
    batch = tokenizer(notes, return_tensors="pt", padding=True)
    width = batch["input_ids"].shape[1]
    options = dict(do_sample=False) if seed is None else dict(do_sample=True, temperature=1.0, top_p=1.0)
    if seed is not None:
        torch.manual_seed(seed)
    logits_processor = processors(width) if processors else None
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, num_return_sequences=n,
                             logits_processor=logits_processor, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **options)
    return [(row[width:].tolist(), tokenizer.decode(row[width:], skip_special_tokens=True)) for row in out]


def _check_answer(text: str, ids: list[int], eos: int) -> list[str]:
    match = ANSWER.fullmatch(text)
    assert match, f"not an answer: {text!r}"
    codes = match.group(1).split(", ") if match.group(1) else []
    assert set(codes) <= set(ALLOWED), codes
    assert len(codes) == len(set(codes)), codes
    assert eos in ids, "a complete answer must be followed by EOS"
    return codes


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3])
def test_constrained_generation_follows_the_grammar(model, tokenizer, grammar, seed):
    def processors(width):
        return constrained_processor(tokenizer, ALLOWED, prompt_length=width)

    results = _generate(model, tokenizer, processors, seed=seed, n=1 if seed is None else 3)
    for ids, text in results:
        _check_answer(text, ids, tokenizer.eos_token_id)
        assert grammar.complete(text)


def test_sampling_reaches_several_codes(model, tokenizer, grammar):
    shared = CodeConstraintProcessor(tokenizer, grammar, prompt_length=0)  # built once, reused per batch
    seen: set[str] = set()
    for seed in range(4):
        results = _generate(model, tokenizer, lambda w: [shared.with_prompt_length(w)], seed=seed, n=4)
        for ids, text in results:
            seen.update(_check_answer(text, ids, tokenizer.eos_token_id))
    assert len(seen) >= 3, seen  # the constraint narrows the choice, it does not pin one answer


def test_each_row_keeps_to_its_own_grammar(model, tokenizer, grammar):
    """Candidate-constrained decoding: every row of a batch (each note x each sample) has its own codes."""
    shared = CodeConstraintProcessor(tokenizer, grammar, prompt_length=0)
    per_note = [ALLOWED[:2], ALLOWED[-3:]]  # the two notes of _generate
    rows = [CodeGrammar(per_note[i]) for i in (0, 0, 0, 1, 1, 1)]  # 3 samples each, prompt-major like generate
    seen: list[set[str]] = [set(), set()]
    for seed in range(3):
        results = _generate(model, tokenizer, lambda w: [shared.for_rows(w, rows)], seed=seed, n=3)
        for r, (ids, text) in enumerate(results):
            codes = _check_answer(text, ids, tokenizer.eos_token_id)
            assert set(codes) <= set(per_note[r // 3]), (r, codes)
            seen[r // 3].update(codes)
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    with pytest.raises(ValueError, match="row grammars"):  # a batch of another size is a caller error
        _generate(model, tokenizer, lambda w: [shared.for_rows(w, rows[:2])], seed=0, n=3)


def test_without_the_processor_the_random_model_breaks_the_grammar(model, tokenizer, grammar):
    results = _generate(model, tokenizer, None, seed=None) + _generate(model, tokenizer, None, seed=0, n=3)
    assert not any(grammar.complete(text) for _, text in results)
    assert not any(grammar.viable(text) for _, text in results)


def test_processor_masks_exactly_the_non_viable_tokens(tokenizer, grammar):
    processor = CodeConstraintProcessor(tokenizer, grammar, prompt_length=2)
    surfaces = token_surfaces(tokenizer)
    eos = tokenizer.eos_token_id
    for prefix in ["", "<code>", "<code>E1", "<code>E11", "<code>E11, ", "<code>I10</code>"]:
        ids = tokenizer.encode(prefix, add_special_tokens=False)
        input_ids = torch.tensor([[eos, eos] + ids])
        scores = processor(input_ids, torch.zeros(1, len(tokenizer)))
        kept = {i for i in range(len(tokenizer)) if scores[0, i] == 0}
        if grammar.complete(prefix):
            assert kept == {eos}
            continue
        expected = {i for i, s in enumerate(surfaces) if s and i != eos and grammar.viable(prefix + s)}
        assert kept == expected and kept, prefix



def test_padded_model_vocabulary_and_several_eos_ids(tokenizer, grammar):
    """Models often have more logits than the tokenizer has ids; chat models end on one of several ids."""
    pad = tokenizer.pad_token_id
    processor = CodeConstraintProcessor(tokenizer, grammar, prompt_length=0, eos_token_id=[tokenizer.eos_token_id, pad])
    extra = len(tokenizer) + 16
    done = torch.tensor([tokenizer.encode("<code>I10</code>", add_special_tokens=False)])
    scores = processor(done, torch.zeros(1, extra))
    assert {i for i in range(extra) if scores[0, i] == 0} == {tokenizer.eos_token_id, pad}
    start = processor(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, extra))
    assert torch.isinf(start[0, len(tokenizer):]).all() and torch.isinf(start[0, pad])  # EOS only when complete
    assert not torch.isinf(start[0, tokenizer.convert_tokens_to_ids("<")])
