"""Text for masked-language models: real text shipped with Python, a byte-level tokenizer, a fixed
train/test split of sequences and BERT's masking rule; plus synthetic token sequences.

- **Corpus**: ``pydoc_data.topics``, the interpreter's bundled documentation (79 topics of the
  language reference on CPython 3.11, about 466 kB of UTF-8), topics joined in sorted order.
- **Tokenizer**: ids 0–4 are ``[PAD] [UNK] [CLS] [SEP] [MASK]``; byte ``c`` is id ``c + 5``
  (vocabulary of 261; ``[PAD]`` and ``[UNK]`` never occur since sequences are full and every byte
  has an id).
- **Sequences**: the token stream cut into consecutive chunks of ``seq_len − 2`` bytes, each
  wrapped as ``[CLS] chunk [SEP]``; the incomplete last chunk is dropped. A fixed permutation
  (seed :data:`SPLIT_SEED`, independent of any run seed) puts :data:`TEST_FRACTION` of the chunks in
  the test split: the two splits never share a chunk of the text.
- **Masking** (:func:`mask_tokens`, BERT's rule): every non-special token is selected with
  probability 0.15; a selected token becomes ``[MASK]`` with probability 0.8, a uniformly random
  byte token with probability 0.1, and stays itself with probability 0.1. Labels are the original
  ids at selected positions and ``-100`` (ignored by the loss) elsewhere.
- **Static masks** for training (:func:`mlm_split`): each split is masked once with a fixed seed, as
  BERT's original data pipeline does, so every run and every optimizer sees the same targets.
- **Synthetic tokens**: uniform random byte tokens in the same ``[CLS] … [SEP]`` frame, masked by the
  same rule; no structure to learn (accuracy stays near chance), meant for profiling and smoke tests.
"""

from __future__ import annotations

import torch

from thor_planner.utils.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL_TOKENS))
BYTE_OFFSET = len(SPECIAL_TOKENS)
VOCAB_SIZE = BYTE_OFFSET + 256
IGNORE_INDEX = -100
MASK_PROB, MASK_TOKEN_PROB, RANDOM_TOKEN_PROB = 0.15, 0.8, 0.1
SEQ_LEN = 128
TEST_FRACTION = 0.1
SPLIT_SEED, TRAIN_MASK_SEED, TEST_MASK_SEED = 1234, 1235, 1236
TOKENS_TRAIN, TOKENS_TEST, TOKENS_SEED = 2048, 256, 4321

Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def encode(text: str) -> torch.Tensor:
    """Token ids (int64) of ``text``'s UTF-8 bytes, no special tokens added."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64) + BYTE_OFFSET


def decode(ids: torch.Tensor) -> str:
    """Text of byte tokens; special tokens are written by name (``[MASK]``)."""
    out, run = [], bytearray()
    for i in ids.tolist():
        if i >= BYTE_OFFSET:
            run.append(i - BYTE_OFFSET)
            continue
        out.append(run.decode("utf-8", errors="replace"))
        out.append(SPECIAL_TOKENS[i])
        run = bytearray()
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


def corpus_text() -> str:
    """The bundled documentation of this Python, topics in sorted order, blank-line separated."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:
        raise UserError("The 'text' data needs the standard library's pydoc_data module, which this "
                        "Python lacks: use a full Python install, or --data tokens") from exc
    return "\n\n".join(topics[k] for k in sorted(topics))


def _check_seq_len(seq_len: int) -> None:
    if seq_len < 3:
        raise UserError(f"Invalid sequence length {seq_len}: must be >= 3 ([CLS], a token, [SEP])")


def frame(chunks: torch.Tensor) -> torch.Tensor:
    """``[CLS] chunk [SEP]`` for every row of ``chunks``."""
    n = chunks.shape[0]
    return torch.cat([torch.full((n, 1), CLS), chunks, torch.full((n, 1), SEP)], dim=1)


def text_chunks(seq_len: int = SEQ_LEN) -> torch.Tensor:
    """All framed sequences of the corpus, in text order: ``(N, seq_len)`` int64."""
    _check_seq_len(seq_len)
    ids = encode(corpus_text())
    width = seq_len - 2
    count = len(ids) // width
    return frame(ids[: count * width].view(count, width))


def text_split(seq_len: int = SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train, test, train_index, test_index)``: the framed sequences of each split and their
    chunk indices in text order (fixed permutation, the same for every run)."""
    chunks = text_chunks(seq_len)
    order = torch.randperm(len(chunks), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, round(TEST_FRACTION * len(chunks)))
    test_index, train_index = order[:n_test].sort().values, order[n_test:].sort().values
    return chunks[train_index], chunks[test_index], train_index, test_index


def mask_tokens(ids: torch.Tensor, generator: torch.Generator, vocab_size: int = VOCAB_SIZE
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of ``ids`` (any shape): ``(inputs, labels)``; see the module docstring.
    Random replacements are drawn from the byte tokens ``[BYTE_OFFSET, vocab_size)``."""
    selected = (torch.rand(ids.shape, generator=generator) < MASK_PROB) & (ids >= BYTE_OFFSET)
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(BYTE_OFFSET, vocab_size, ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[selected & (action < MASK_TOKEN_PROB)] = MASK
    to_random = selected & (action >= MASK_TOKEN_PROB) & (action < MASK_TOKEN_PROB + RANDOM_TOKEN_PROB)
    inputs[to_random] = random_ids[to_random]
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def random_tokens(count: int, seq_len: int, generator: torch.Generator, vocab_size: int = VOCAB_SIZE
                  ) -> torch.Tensor:
    """``count`` framed sequences of uniform random byte tokens."""
    _check_seq_len(seq_len)
    return frame(torch.randint(BYTE_OFFSET, vocab_size, (count, seq_len - 2), generator=generator))


def mlm_split(data: str, seq_len: int = SEQ_LEN) -> Split:
    """``(x_train, y_train, x_test, y_test)`` for ``'text'`` or ``'tokens'``: masked inputs and
    labels ``(N, seq_len)``, statically masked with fixed seeds."""
    if data == "text":
        train, test, _, _ = text_split(seq_len)
    elif data == "tokens":
        gen = torch.Generator().manual_seed(TOKENS_SEED)
        train, test = random_tokens(TOKENS_TRAIN + TOKENS_TEST, seq_len, gen).split([TOKENS_TRAIN, TOKENS_TEST])
    else:
        raise ValueError(f"Invalid data={data!r}: use 'text' or 'tokens'")
    x_train, y_train = mask_tokens(train, torch.Generator().manual_seed(TRAIN_MASK_SEED))
    x_test, y_test = mask_tokens(test, torch.Generator().manual_seed(TEST_MASK_SEED))
    return x_train, y_train, x_test, y_test
