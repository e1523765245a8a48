"""The torch half of PLM-ICD (Huang et al., 2022): segment encoder + label-wise attention.

Imported only by :mod:`icdcoder.coders.plm_icd` when a model is built, so that ``import icdcoder``
never needs torch.

Shapes: ``B`` notes, ``S`` segments per note, ``T`` tokens per segment, ``N = S*T``, ``D`` encoder
width, ``P`` attention width, ``L`` codes.

Label-wise attention, per code ``l``: ``a_l = softmax_t(u_l . tanh(W h_t))`` over every unmasked token
of the note, ``v_l = sum_t a_l,t h_t``, ``logit_l = w_l . v_l + b_l``.

The softmax is the overflow guard: the reference implementation computes it in the autocast dtype
and collapses to NaN under fp16 (logits above 65504, or ``-inf`` masks on fully padded rows). Here
the attention logits, the mask and the softmax are float32 whatever autocast says; the row maximum
is subtracted; masked positions get a large negative *finite* value, and rows with no valid position
at all get zero weights (never NaN).
"""

from __future__ import annotations

import torch
from torch import nn

MASK_VALUE = -1e30  # finite in float32: a fully masked row gives exp(0) everywhere, not NaN


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax of ``logits`` over ``dim`` in float32, ignoring positions where ``mask`` is 0/False.

    ``mask`` broadcasts against ``logits``. Rows with no valid position come out all zeros.
    Always finite for finite or infinite inputs of any magnitude (NaN inputs stay NaN).
    """
    x = logits.float()
    x = x.clamp(min=MASK_VALUE, max=torch.finfo(torch.float32).max)  # +-inf -> finite
    if mask is not None:
        valid = mask.to(dtype=torch.bool, device=x.device)
        valid = valid.expand_as(x) if valid.shape != x.shape else valid
        x = x.masked_fill(~valid, MASK_VALUE)
    x = x - x.amax(dim=dim, keepdim=True).detach()
    w = torch.exp(x)
    if mask is not None:
        w = w * valid
    denom = w.sum(dim=dim, keepdim=True)
    return w / denom.clamp_min(torch.finfo(torch.float32).tiny)


class LabelAttention(nn.Module):
    """Label-wise attention head: hidden states ``[B, N, D]`` -> code logits ``[B, L]``."""

    def __init__(self, hidden_size: int, n_labels: int, attention_size: int | None = None):
        super().__init__()
        attention_size = attention_size or hidden_size
        self.first = nn.Linear(hidden_size, attention_size, bias=False)   # W
        self.second = nn.Linear(attention_size, n_labels, bias=False)     # U: one query per code
        self.third = nn.Linear(hidden_size, n_labels)                     # per-code output
        for lin in (self.first, self.second, self.third):
            nn.init.normal_(lin.weight, mean=0.0, std=0.03)
        nn.init.zeros_(self.third.bias)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None,
                return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``hidden`` [B, N, D], ``mask`` [B, N] (1 = real token). Returns float32 logits [B, L] and,
        when asked, the attention weights [B, L, N]."""
        device_type = hidden.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            h = hidden.float()
            z = torch.tanh(self.first(h))                          # [B, N, P]
            scores = self.second(z).transpose(1, 2)                # [B, L, N]
            att = masked_softmax(scores, None if mask is None else mask[:, None, :], dim=-1)
            v = att @ h                                            # [B, L, D]
            logits = (self.third.weight * v).sum(dim=-1) + self.third.bias
        return logits, (att if return_attention else None)


class PlmIcdModel(nn.Module):
    """A pretrained encoder run over segments, states concatenated per note, then label attention."""

    def __init__(self, encoder: nn.Module, n_labels: int, attention_size: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = LabelAttention(encoder.config.hidden_size, n_labels, attention_size)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, S, T]`` ids/mask -> hidden ``[B, S*T, D]``. Segments that are all padding are not run
        through the encoder (their states stay zero and are masked out of the attention)."""
        b, s, t = input_ids.shape
        ids = input_ids.reshape(b * s, t)
        am = attention_mask.reshape(b * s, t)
        used = am.any(dim=1)
        if bool(used.all()):
            out = self.encoder(input_ids=ids, attention_mask=am).last_hidden_state
        else:
            idx = used.nonzero(as_tuple=True)[0]
            part = self.encoder(input_ids=ids[idx], attention_mask=am[idx]).last_hidden_state
            out = part.new_zeros((b * s, t, part.shape[-1]))
            out = out.index_copy(0, idx, part)
        return out.reshape(b, s * t, -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = self.encode(input_ids, attention_mask)
        mask = attention_mask.reshape(attention_mask.shape[0], -1)
        return self.head(hidden, mask, return_attention=return_attention)
