"""Byte-level causal language models (GPT-2's architecture on a 256-byte vocabulary), defined here
(no download).

A token is one byte: ids ``0–255``, no special tokens, so any file is a sequence of ids and the
model's output at position ``t`` predicts byte ``t + 1``. Inputs are ids ``(B, T)`` (int64,
``T <= context``), the output is logits ``(B, T, 256)``.

Architecture (GPT-2, Radford et al. 2019, as nanoGPT writes it): learned token and position
embeddings (``wte``, ``wpe``), ``n_layer`` pre-LayerNorm blocks ``x + attn(ln_1(x))``,
``x + mlp(ln_2(x))``, a final LayerNorm ``ln_f`` and an output projection ``lm_head``. Attention is
causal, computed by ``F.scaled_dot_product_attention(is_causal=True)``; the MLP is
``proj(gelu(fc(x)))`` with a hidden width of ``4·n_embd``. Module names::

    wte, wpe, blocks.{i}.ln_1, blocks.{i}.attn.qkv, blocks.{i}.attn.proj, blocks.{i}.ln_2,
    blocks.{i}.mlp.fc, blocks.{i}.mlp.proj, ln_f, lm_head

Choices for Kronecker preconditioning:

- Q, K and V are one Linear ``attn.qkv`` of ``n_embd → 3·n_embd`` (GPT-2's ``c_attn``): the three
  share their input, so one A factor serves them (separate layers would hold three copies of the
  same A) and G is ``3·n_embd`` wide, which the planner's block split cuts like any other factor.
  ``GPTConfig(fused_qkv=False)`` gives three Linear layers ``attn.q``, ``attn.k``, ``attn.v``.
- Every Linear of a block has a bias (folded into A as its ones column); ``lm_head`` has none, as
  in GPT-2, and is *not* tied to ``wte``, so it is planned like any Linear (A ``n_embd``, G 256).
- Every Linear sees ``(B, T, D)``: each token is a sample of its factors.

Initialisation as GPT-2's: Linear and Embedding weights normal(0, 0.02), biases zero, LayerNorm
weight one and bias zero; the residual projections (``attn.proj``, ``mlp.proj``) normal with std
``0.02 / sqrt(2·n_layer)``. Deterministic under ``torch.manual_seed``.

Built-ins: ``gpt-tiny`` (4 layers, width 128, 4 heads, context 128: 875,264 parameters) and
``gpt-small`` (GPT-2 small's shape on bytes: 12 layers, width 768, 12 heads, context 1024:
86,235,648 parameters; for GPUs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

#: Byte-level vocabulary: one id per byte value, no special tokens.
BYTE_VOCAB = 256
INIT_STD = 0.02


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """A byte-level GPT's shape; the defaults are GPT-2 small's shape on the 256-byte vocabulary."""

    vocab_size: int = BYTE_VOCAB
    context: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    fused_qkv: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Invalid {name}={value!r}: must be >= 1")
        if self.n_embd % self.n_head:
            raise ValueError(f"Invalid n_head={self.n_head}: must divide n_embd={self.n_embd}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"Invalid dropout={self.dropout}: must be in [0, 1)")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"Invalid layer_norm_eps={self.layer_norm_eps}: must be > 0")


#: GPT-2 small's shape (12 layers, width 768, 12 heads, context 1024) on bytes.
GPT_SMALL = GPTConfig()
#: A CPU-sized GPT: 4 layers, width 128, 4 heads, context 128.
GPT_TINY = GPTConfig(context=128, n_layer=4, n_head=4, n_embd=128)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: ``proj(softmax(q kᵀ/√d_head + causal mask) v)``."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.p = c.n_head, c.dropout
        if c.fused_qkv:
            self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd)
        else:
            self.q = nn.Linear(c.n_embd, c.n_embd)
            self.k = nn.Linear(c.n_embd, c.n_embd)
            self.v = nn.Linear(c.n_embd, c.n_embd)
        self.proj = nn.Linear(c.n_embd, c.n_embd)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split(d, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0,
                                             is_causal=True)
        return self.dropout(self.proj(out.transpose(1, 2).reshape(b, t, d)))


class MLP(nn.Module):
    """``proj(gelu(fc(x)))`` with a hidden width of ``4·n_embd``."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(c.n_embd, 4 * c.n_embd)
        self.proj = nn.Linear(4 * c.n_embd, c.n_embd)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.attn = CausalSelfAttention(c)
        self.ln_2 = nn.LayerNorm(c.n_embd, eps=c.layer_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A byte-level causal LM: ids ``(B, T)`` → next-byte logits ``(B, T, vocab_size)``.

    ``input_shape`` (``(context,)``) and ``vocab_size`` tell the profiler that inputs are token ids;
    ``objective = "causal"`` that labels are the next tokens (not masked-LM targets).
    """

    objective = "causal"

    def __init__(self, config: GPTConfig = GPT_TINY) -> None:
        super().__init__()
        self.config = config
        self.input_shape = (config.context,)
        self.vocab_size = config.vocab_size
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.context, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=INIT_STD)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, std=residual_std)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        if t > self.config.context:
            raise ValueError(f"Sequence length {t} exceeds the model's context of {self.config.context} "
                             "positions")
        positions = torch.arange(t, device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(positions))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def gpt_tiny(num_classes: int | None = None) -> GPT:
    """``gpt-tiny``: 4 layers, width 128, 4 heads, context 128; ``num_classes`` is the vocabulary
    size (default 256, one id per byte)."""
    return GPT(replace(GPT_TINY, vocab_size=BYTE_VOCAB if num_classes is None else num_classes))


def gpt_small(num_classes: int | None = None) -> GPT:
    """``gpt-small``: GPT-2 small's shape (12 layers, width 768, 12 heads, context 1024) on bytes;
    ``num_classes`` is the vocabulary size (default 256)."""
    return GPT(replace(GPT_SMALL, vocab_size=BYTE_VOCAB if num_classes is None else num_classes))


__all__ = ["BYTE_VOCAB", "GPT", "GPTConfig", "GPT_SMALL", "GPT_TINY", "gpt_small", "gpt_tiny"]
