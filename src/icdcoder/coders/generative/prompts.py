"""Chat prompts for generative coders: instruction, optional few-shot examples and candidate-code
descriptions, the note cut to a token budget, and (PHI training only) a hint naming missed codes.

Truncation rule, used everywhere a note meets a token budget: keep the first ``head_fraction`` of
the budget from the start of the note and the rest from its end, and put ``[...]`` where the middle
was cut (discharge summaries state the reason for admission early and the final diagnoses late).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from icdcoder.coders.generative.answer import format_answer, truncate_middle
from icdcoder.coders.generative.backends import Messages
from icdcoder.errors import IcdcoderError

SYSTEM_NAMES = {"icd10cm": "ICD-10-CM", "icd9cm": "ICD-9-CM", "icd10pcs": "ICD-10-PCS", "icd9pcs": "ICD-9-CM procedure",
                # mixed label spaces (MIMIC-III: diagnoses and procedures): each code's system is read off its shape
                "icd9": "ICD-9-CM diagnosis and procedure", "icd10": "ICD-10-CM and ICD-10-PCS"}
MIXED = ("icd9", "icd10")


def code_system(system: str) -> str | None:
    """The system the parser and formatter use: None (per-code inference) for a mixed label space."""
    return None if system in MIXED else system
INSTRUCTION = ("You are a professional clinical coder. Read the clinical note and assign every {name} code it "
               "supports. Answer only with the codes, dotted and sorted, as <code>C1, C2, ...</code>.")
EVIDENCE_INSTRUCTION = ("You are a professional clinical coder. Read the clinical note and assign every {name} code "
                        "it supports. Answer only with the codes, dotted and sorted, each followed by | and the "
                        "words of the note that support it, as <code>C1 | \"quote\"; C2 | \"quote\"</code>.")

Offsets = Callable[[str], list[tuple[int, int]]]


@dataclass
class PromptConfig:
    """What goes into a prompt and how long it may be (tokens of the LM's tokenizer)."""

    system: str = "icd10cm"
    max_note_tokens: int = 1536
    head_fraction: float = 0.5
    few_shot: int = 0                 # solved examples from training notes (nearest by TF-IDF)
    few_shot_note_tokens: int = 256   # budget of each example's note
    candidates: int = 0               # candidate codes described in the prompt (from the nearest notes)
    candidates_from: str | None = None  # ... or from this saved coder's ranking (e.g. a rerank model folder)
    candidate_order: str = "rank"     # rank: as ranked; code: sorted like the answer, so that writing the
    #                                   answer is one pass down the list (easier for a small LM to learn)
    candidate_scores: bool = False    # show the ranker's score beside each candidate ("[0.93]"): how sure
    #                                   the retriever is, which a small LM can learn to weigh against the note
    instruction: str | None = None    # overrides INSTRUCTION
    evidence: bool = False            # evidence-grounded answers: each code with a quote of the note

    def __post_init__(self) -> None:
        if self.candidate_order not in ("rank", "code"):
            raise IcdcoderError(f"prompt.candidate_order must be rank or code, not {self.candidate_order!r}")


def cut(text: str, budget: int, offsets: Offsets, head_fraction: float = 0.5) -> str:
    return truncate_middle(text, offsets(text), budget, head_fraction=head_fraction)


def hint_block(hint: Sequence[tuple[str, str | None]]) -> str:
    """The PHI training hint: codes the model missed on this note, with descriptions."""
    items = "; ".join(f"{c} ({d})" if d else c for c, d in hint)
    return f"Training hint - this note also documents: {items}."


def candidate_line(code: str, description: str | None, score: float | None = None, show_score: bool = False) -> str:
    """One line of the candidate list: ``I10 [0.93] Essential (primary) hypertension``."""
    shown = f" [{score:.2f}]" if show_score and score is not None else ""
    return f"{code}{shown} {description or ''}".rstrip()


def build_messages(text: str, cfg: PromptConfig, offsets: Offsets, *,
                   examples: Sequence[tuple[str, Sequence[str]]] = (),
                   candidates: Sequence[tuple] = (),
                   hint: Sequence[tuple[str, str | None]] = ()) -> Messages:
    """System instruction, then few-shot turns (user note / assistant answer), then the note.
    ``candidates`` are (code, description) or (code, description, score) tuples."""
    name = SYSTEM_NAMES.get(cfg.system, cfg.system)
    default = EVIDENCE_INSTRUCTION if cfg.evidence else INSTRUCTION
    msgs: Messages = [{"role": "system", "content": (cfg.instruction or default).format(name=name)}]
    for ex_text, ex_codes in examples:
        msgs.append({"role": "user", "content": "Note:\n" + cut(ex_text, cfg.few_shot_note_tokens, offsets,
                                                                   cfg.head_fraction)})
        msgs.append({"role": "assistant", "content": format_answer(ex_codes, code_system(cfg.system))})
    parts = []
    if candidates and cfg.candidate_order == "code":
        candidates = sorted(candidates, key=lambda cd: cd[0])
    if candidates:
        header = "Candidate codes [retriever score]:" if cfg.candidate_scores else "Candidate codes:"
        parts.append(header + "\n" + "\n".join(candidate_line(*cd, show_score=cfg.candidate_scores)
                                                      for cd in candidates))
    if hint:
        parts.append(hint_block(hint))
    parts.append("Note:\n" + cut(text, cfg.max_note_tokens, offsets, cfg.head_fraction))
    msgs.append({"role": "user", "content": "\n\n".join(parts)})
    return msgs


class Retriever:
    """Nearest training notes by TF-IDF cosine: the source of few-shot examples and candidate codes."""

    def __init__(self, texts: Sequence[str], codes: Sequence[Sequence[str]]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.texts, self.codes = list(texts), [list(c) for c in codes]
        self.vectorizer = TfidfVectorizer(sublinear_tf=True, min_df=1, max_features=50000, stop_words="english")
        self.matrix = self.vectorizer.fit_transform(self.texts)

    def nearest(self, text: str, k: int, exclude: str | None = None) -> list[int]:
        if k <= 0 or not self.texts:
            return []
        sims = (self.matrix @ self.vectorizer.transform([text]).T).toarray().ravel()
        order = sims.argsort()[::-1]
        return [int(i) for i in order if exclude is None or self.texts[i] != exclude][:k]

    def candidates(self, text: str, n: int, k: int = 10, exclude: str | None = None) -> list[str]:
        """The ``n`` codes most frequent among the ``k`` nearest notes."""
        counts: dict[str, int] = {}
        for i in self.nearest(text, k, exclude):
            for c in self.codes[i]:
                counts[c] = counts.get(c, 0) + 1
        return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
