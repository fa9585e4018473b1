"""BERT masked-language models defined here (no download), ``hf:`` models when ``transformers``
imports, and the rule that decides which of a transformer's Linear layers the planner leaves out.

Layout: batch first. Every Linear sees ``(B, T, D)`` inputs, so a capture counts each token as a
sample. Module names follow Hugging Face's ``BertForMaskedLM`` (``bert.encoder.layer.0.attention.
self.query``, ``cls.predictions.decoder``, ...), so plans read the same for built-in and ``hf:``
models; a Hugging Face BERT masked-LM state dict loads strictly once its alias
``cls.predictions.bias`` (of ``cls.predictions.decoder.bias``) is dropped, and the two compute the
same logits (tested when ``transformers`` imports). Q, K and V are three separate Linear layers (``query``, ``key``, ``value``: three planned
layers with the same A factor) unless ``fused_qkv=True``, which uses one Linear ``qkv`` of
``hidden → 3·hidden`` (one A factor, a G factor three times larger). Embeddings and LayerNorm are
neither Conv2d nor Linear: the optimizer gives them its first-order update. There is no attention
mask: every sequence fills the whole length (no padding). The forward returns logits ``(B, T, V)``.

Output projection rule (:func:`planner_skips`): the decoder ``cls.predictions.decoder``
(``hidden → vocab``) is planned like any Linear unless

- its weight is tied to an ``nn.Embedding`` (BERT's published configuration): the weight's gradient
  also carries the embedding's, which Kronecker factors of the decoder alone do not describe, so
  it takes the first-order update; or
- one of its factor dimensions exceeds :data:`MAX_PLANNED_DIM` (a large untied vocabulary).

Either way the plan's skipped list gives the reason, the factor dimensions and what the G factor
would cost (float32 memory, ``d³`` flop to invert densely). The rule applies to every Linear of a
token model (built-in BERT, ``hf:`` models, factories that declare ``vocab_size``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from thor_planner.utils.errors import UserError

#: Factor dimensions above this are not planned (a G factor of 8193² is 268 MB in float32).
MAX_PLANNED_DIM = 8192


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    """A BERT masked-LM's shape; the defaults are BERT-base (Devlin et al., 2019), uncased vocab."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position: int = 512
    type_vocab_size: int = 2
    seq_len: int = 128
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    tie_word_embeddings: bool = True
    fused_qkv: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"Invalid {f.name}={value!r}: must be an integer >= 1")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"Invalid num_heads={self.num_heads}: must divide "
                             f"hidden_size={self.hidden_size}")
        if self.seq_len > self.max_position:
            raise ValueError(f"Invalid seq_len={self.seq_len}: must be <= max_position={self.max_position}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"Invalid dropout={self.dropout}: must be in [0, 1)")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"Invalid layer_norm_eps={self.layer_norm_eps}: must be > 0")


#: BERT-base: 12 layers, hidden 768, intermediate 3072, 12 heads, WordPiece vocabulary of 30522.
BERT_BASE = BertConfig()
#: BERT-tiny's shape (2 layers, hidden 128, intermediate 512, 2 heads) on this package's byte-level
#: vocabulary (261 tokens, :mod:`thor_planner.inputs.text`), with an untied output projection.
BERT_TINY = BertConfig(vocab_size=261, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512,
                       tie_word_embeddings=False)


class BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings.weight[0])
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.num_heads, self.p = c.num_heads, c.dropout
        if c.fused_qkv:
            self.qkv = nn.Linear(c.hidden_size, 3 * c.hidden_size)
        else:
            self.query = nn.Linear(c.hidden_size, c.hidden_size)
            self.key = nn.Linear(c.hidden_size, c.hidden_size)
            self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        if hasattr(self, "qkv"):
            q, k, v = self.qkv(x).split(d, dim=-1)
        else:
            q, k, v = self.query(x), self.key(x), self.value(x)
        q, k, v = (z.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2) for z in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, t, d)


class _DenseNorm(nn.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``: BERT's self-output and output blocks."""

    def __init__(self, c: BertConfig, d_in: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(c)
        self.output = _DenseNorm(c, c.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(c)
        self.intermediate = BertIntermediate(c)
        self.output = _DenseNorm(c, c.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class BertModel(nn.Module):
    """Embeddings and encoder (no pooler: a masked LM does not use it)."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(c)
        self.encoder = BertEncoder(c)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids))


class BertPredictionHead(nn.Module):
    """``decoder(LayerNorm(gelu(transform.dense(h))))``: the masked-LM head."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.transform.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.decoder = nn.Linear(c.hidden_size, c.vocab_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform.LayerNorm(F.gelu(self.transform.dense(h))))


class BertForMaskedLM(nn.Module):
    """BERT with its masked-LM head: token ids ``(B, T)`` → logits ``(B, T, vocab_size)``.

    ``input_shape`` (``(seq_len,)``) and ``vocab_size`` tell the profiler that inputs are token ids.
    Initialisation as BERT's: normal(0, 0.02) weights, zero biases, unit LayerNorm.
    """

    def __init__(self, config: BertConfig = BERT_BASE) -> None:
        super().__init__()
        self.config = config
        self.input_shape = (config.seq_len,)
        self.vocab_size = config.vocab_size
        self.bert = BertModel(config)
        self.cls = nn.Module()
        self.cls.predictions = BertPredictionHead(config)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        if config.tie_word_embeddings:
            self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.cls.predictions(self.bert(input_ids))


def bert_base(num_classes: int | None = None) -> BertForMaskedLM:
    """BERT-base masked LM; ``num_classes`` is the vocabulary size (default 30522)."""
    vocab = BERT_BASE.vocab_size if num_classes is None else num_classes
    return BertForMaskedLM(replace(BERT_BASE, vocab_size=vocab))


def bert_tiny(num_classes: int | None = None) -> BertForMaskedLM:
    """BERT-tiny masked LM; ``num_classes`` is the vocabulary size (default 261, byte level)."""
    vocab = BERT_TINY.vocab_size if num_classes is None else num_classes
    return BertForMaskedLM(replace(BERT_TINY, vocab_size=vocab))


# ------------------------------------------------------------------------- planner skip rule


def _cost(dim: int) -> str:
    gb = dim * dim * 4 / 1e9
    return f"{gb:.3g} GB in float32, ≈ {float(dim) ** 3:.2g} flop to invert densely"


def planner_skips(model: nn.Module, max_dim: int = MAX_PLANNED_DIM) -> dict[str, str]:
    """Linear layers of a token model the planner leaves to the first-order update, with why.

    A Linear whose weight is an ``nn.Embedding``'s weight (a tied output projection), or with a
    factor dimension (``in + bias`` or ``out``) above ``max_dim``.
    """
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    out: dict[str, str] = {}
    for name, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        a_dim, g_dim = m.in_features + (m.bias is not None), m.out_features
        shape = f"{m.in_features}→{m.out_features}, factors A {a_dim}, G {g_dim}"
        if id(m.weight) in embedded:
            out[name] = (f"output projection tied to the word embeddings ({shape}; G would be "
                         f"{_cost(g_dim)}): its gradient also holds the embedding's, so it takes the "
                         "first-order update")
        elif max(a_dim, g_dim) > max_dim:
            out[name] = (f"factor dimension {max(a_dim, g_dim)} above {max_dim} ({shape}; "
                         f"{_cost(max(a_dim, g_dim))}): takes the first-order update")
    return out


# ------------------------------------------------------------------------- Hugging Face models


class LogitsOnly(nn.Module):
    """A Hugging Face masked LM returning its logits tensor (module names gain ``model.``)."""

    def __init__(self, model: nn.Module, seq_len: int, vocab_size: int) -> None:
        super().__init__()
        self.model = model
        self.input_shape = (seq_len,)
        self.vocab_size = vocab_size

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def hf_model(spec: str, num_classes: int | None = None) -> LogitsOnly:
    """``AutoModelForMaskedLM`` built from a config, without weights: ``spec`` is a config.json
    file or folder, a name already in the local Hugging Face cache, or a model type (``bert``).
    Nothing is downloaded. ``num_classes`` overrides the vocabulary size."""
    try:
        import transformers
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
        raise UserError(f"Model 'hf:{spec}' needs transformers, which does not import here: "
                        "pip install transformers, or use a built-in model (bert-base, bert-tiny)") from exc
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        if os.path.exists(spec):
            config = transformers.AutoConfig.from_pretrained(spec, local_files_only=True)
        else:
            try:
                config = transformers.AutoConfig.from_pretrained(spec, local_files_only=True)
            except (OSError, ValueError):
                config = transformers.AutoConfig.for_model(spec)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"Unknown Hugging Face config 'hf:{spec}': pass a config.json, a cached model "
                        "name or a model type such as 'bert'") from exc
    if num_classes is not None:
        config.vocab_size = num_classes
    try:
        model = transformers.AutoModelForMaskedLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise UserError(f"Config 'hf:{spec}' has no masked-LM model in transformers: {exc}") from exc
    seq_len = min(BERT_BASE.seq_len, getattr(config, "max_position_embeddings", BERT_BASE.seq_len))
    return LogitsOnly(model, seq_len, int(config.vocab_size))


__all__ = ["BERT_BASE", "BERT_TINY", "MAX_PLANNED_DIM", "BertConfig", "BertForMaskedLM", "LogitsOnly",
           "bert_base", "bert_tiny", "hf_model", "planner_skips"]
