"""The tiny default LM: a few-million-parameter Qwen2-architecture causal LM built from a config, with
a byte-level BPE tokenizer trained here on the training notes plus ICD descriptions.

No model hub is needed, so the whole generative pipeline (prompting, SFT, GRPO, PHI) runs on two CPU
cores. It is a stand-in that shows the recipe works end to end; results at real scale come from real
instruct models (any Hugging Face id or path) on GPUs.

Optionally the model is pre-trained briefly as a plain language model on unlabelled clinical text
(the training notes, extra text files such as CodiEsp's background set) and on ``CODE description``
lines from the ontology, a small taste of the ICD knowledge a real LLM brings.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from icdcoder.coders.generative.answer import CLOSE, OPEN

# Chat template shared by the tiny tokenizer: the rendered prompt (with the generation prompt) is a
# prefix of the rendered conversation, which is what answer-only SFT losses rely on.
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END, PAD, UNK = "<|end|>", "<|pad|>", "<|unk|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class TinyConfig:
    """Size of the tiny LM and of its brief pre-training. Defaults fit the study in minutes on 2 cores."""

    vocab_size: int = 6000
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    max_positions: int = 1024
    code_tokens: bool = True          # each training code is one token (a word-bounded added token)
    pretrain_steps: int = 0           # causal-LM steps on notes + ontology lines before any coding
    pretrain_batch: int = 8
    pretrain_block: int = 256
    pretrain_lr: float = 2e-3
    pretrain_files: list[str] = field(default_factory=list)  # extra unlabelled text files (one doc per file or line)
    seed: int = 13


def train_tokenizer(texts: Iterable[str], vocab_size: int, codes: Sequence[str] = ()):
    """Byte-level BPE over ``texts``; the chat/answer markers (and optionally ``codes``) become whole tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, END, *ROLE_TOKENS.values()]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # Markers of the answer and the codes stay ordinary (not special) tokens: decoding keeps them.
    tok.add_tokens([AddedToken(OPEN, normalized=False), AddedToken(CLOSE, normalized=False)])
    tok.add_tokens([AddedToken(c, single_word=True, normalized=False) for c in codes])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token=PAD, unk_token=UNK,
                                   additional_special_tokens=list(ROLE_TOKENS.values()))
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, cfg: TinyConfig):
    """A randomly initialised Qwen2-architecture causal LM sized by ``cfg``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
                         max_position_embeddings=cfg.max_positions, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def ontology_lines(codes: Iterable[str], system: str = "icd10cm") -> list[str]:
    """``CODE description`` lines (plus inclusion terms) for the codes the ontology knows."""
    from icdcoder.coders.generative.prompts import code_system
    from icdcoder.ontology import get_ontology

    onto, out = get_ontology(), []
    for c in codes:
        info = onto.lookup(c, code_system(system))
        if info is None:
            continue
        out.append(f"{c} {info.description}")
        out.extend(f"{c} {t}" for t in getattr(info, "inclusion_terms", ())[:3])
    return out


def _read_extra(files: Sequence[str]) -> list[str]:
    docs = []
    for f in files:
        p = Path(f)
        paths = sorted(p.glob("*.txt")) if p.is_dir() else [p]
        docs.extend(q.read_text(encoding="utf-8", errors="replace") for q in paths)
    return docs


def pretrain(model, tokenizer, docs: Sequence[str], cfg: TinyConfig, log=print) -> dict:
    """Plain causal-LM training on packed blocks of ``docs`` for ``cfg.pretrain_steps`` steps."""
    import torch

    from icdcoder.progress import Progress

    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer(d, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    block = cfg.pretrain_block
    n_blocks = len(ids) // block
    if n_blocks == 0 or cfg.pretrain_steps <= 0:
        return {"steps": 0, "tokens": 0}
    data = torch.tensor(ids[: n_blocks * block]).view(n_blocks, block)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / cfg.pretrain_steps)))
    model.train()
    loss = torch.tensor(float("nan"))
    with Progress("tiny LM pretrain", cfg.pretrain_steps) as bar:
        for _ in range(cfg.pretrain_steps):
            batch = data[[rng.randrange(n_blocks) for _ in range(cfg.pretrain_batch)]]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.update(loss=loss.item())
    model.eval()
    log(f"pre-trained the tiny LM: {cfg.pretrain_steps} steps, final loss {loss.item():.3f}")
    return {"steps": cfg.pretrain_steps, "tokens": cfg.pretrain_steps * cfg.pretrain_batch * block,
            "final_loss": round(loss.item(), 4)}


def build_tiny_lm(train_notes, out_dir: str | Path, cfg: TinyConfig | None = None, system: str = "icd10cm",
                  log=print) -> Path:
    """Tokenizer + model + optional pre-training, saved to ``out_dir`` (an HF folder any back-end loads)."""
    import torch

    from icdcoder.io import atomic_dir, write_json

    cfg = cfg or TinyConfig()
    codes = sorted({c for n in train_notes for c in n.codes})
    onto = ontology_lines(codes, system)
    texts = [n.text for n in train_notes]
    extra = _read_extra(cfg.pretrain_files)
    tokenizer = train_tokenizer([*texts, *extra, *onto], cfg.vocab_size, codes if cfg.code_tokens else ())
    model = build_model(tokenizer, cfg)
    torch.manual_seed(cfg.seed)
    stats = pretrain(model, tokenizer, [*texts, *extra, "\n".join(onto)], cfg, log=log)
    with atomic_dir(out_dir, marker="config.json") as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        write_json(stage / "tiny_lm.json", {"config": asdict(cfg), "pretrain": stats,
                                            "parameters": sum(p.numel() for p in model.parameters())})
    log(f"built the tiny LM: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
        f"vocabulary {len(tokenizer):,}")
    return Path(out_dir)
