"""Text data for masked-language models: byte tokenizer, fixed split, BERT's 80/10/10 masking, the
profiler's token batches and the training loop's masked-token loss and accuracy."""

from __future__ import annotations

import math

import pytest
import torch

from thor_planner.inputs import text
from thor_planner.inputs.data import load_batches
from thor_planner.inputs.text import (BYTE_OFFSET, CLS, IGNORE_INDEX, MASK, SEP, VOCAB_SIZE, corpus_text, decode,
                                      encode, mask_tokens, mlm_split, text_split)
from thor_planner.training.loop import TrainConfig, TrainConfigError, evaluate, train
from thor_planner.utils.errors import UserError


pytestmark = pytest.mark.usefixtures("one_thread")


def test_byte_tokenizer_round_trip_and_specials() -> None:
    s = "def f(x):\n    return x ** 2  # é"
    ids = encode(s)
    assert ids.dtype == torch.int64 and len(ids) == len(s.encode("utf-8"))
    assert ids.min() >= BYTE_OFFSET and ids.max() < VOCAB_SIZE == 261
    assert decode(ids) == s
    assert decode(torch.tensor([CLS, *encode("ab").tolist(), MASK, SEP])) == "[CLS]ab[MASK][SEP]"


def test_text_split_is_real_text_deterministic_and_disjoint() -> None:
    train, test, train_idx, test_idx = text_split(64)
    again = text_split(64)
    for a, b in zip((train, test, train_idx, test_idx), again):
        assert torch.equal(a, b)
    # disjoint, and together every chunk of the text exactly once
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    stream = encode(corpus_text())
    count = len(stream) // 62
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(count))
    assert len(test) == round(0.1 * count)
    # each sequence is [CLS] + the chunk of the text at its index + [SEP]
    for seqs, idx in ((train, train_idx), (test, test_idx)):
        assert torch.all(seqs[:, 0] == CLS) and torch.all(seqs[:, -1] == SEP)
        for k in (0, len(idx) // 2, len(idx) - 1):
            i = int(idx[k])
            assert torch.equal(seqs[k, 1:-1], stream[i * 62:(i + 1) * 62])
    assert "assert" in decode(train[0])  # the first topic in sorted order is the assert statement


def test_masking_follows_bert_80_10_10() -> None:
    ids = text_split(128)[0]  # about 3300 x 128 real tokens
    inputs, labels = mask_tokens(ids, torch.Generator().manual_seed(0))
    special = ids < BYTE_OFFSET
    selected = labels != IGNORE_INDEX
    assert not selected[special].any()                      # [CLS]/[SEP] are never targets
    assert torch.equal(labels[selected], ids[selected])     # targets are the original tokens
    assert torch.equal(inputs[~selected], ids[~selected])   # unselected tokens are untouched
    n, k = int((~special).sum()), int(selected.sum())
    masked = int((inputs[selected] == MASK).sum())
    changed = int(((inputs[selected] != MASK) & (inputs[selected] != ids[selected])).sum())
    kept = k - masked - changed
    # A random replacement is uniform over 256 byte tokens, so it equals the original with p = 1/256.
    expected = {"selected": (k / n, 0.15, n), "masked": (masked / k, 0.8, k),
                "changed": (changed / k, 0.1 * 255 / 256, k), "kept": (kept / k, 0.1 + 0.1 / 256, k)}
    for what, (observed, p, trials) in expected.items():
        sigma = math.sqrt(p * (1 - p) / trials)  # binomial standard error; 5 sigma: false alarm < 1e-6
        assert abs(observed - p) < 5 * sigma, (what, observed, p, sigma)
    replaced = inputs[selected & (inputs != MASK) & (inputs != ids)]
    assert replaced.min() >= BYTE_OFFSET and replaced.max() < VOCAB_SIZE


def test_masking_is_seeded() -> None:
    ids = text_split(32)[1]
    a = mask_tokens(ids, torch.Generator().manual_seed(3))
    b = mask_tokens(ids, torch.Generator().manual_seed(3))
    c = mask_tokens(ids, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mlm_split_shapes_and_static_masks() -> None:
    x_train, y_train, x_test, y_test = mlm_split("tokens", seq_len=16)
    assert x_train.shape == y_train.shape == (text.TOKENS_TRAIN, 16)
    assert x_test.shape == y_test.shape == (text.TOKENS_TEST, 16)
    again = mlm_split("tokens", seq_len=16)
    assert all(torch.equal(a, b) for a, b in zip((x_train, y_train, x_test, y_test), again))


def test_token_batches_for_the_profiler() -> None:
    src = load_batches("text", input_shape=(32,), num_classes=261, batch_size=4, batches=3, seed=1,
                       vocab_size=261)
    assert src.kind == "text" and len(src.batches) == 3
    for x, y in src.batches:
        assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
        assert torch.all(x[:, 0] == CLS) and (y != IGNORE_INDEX).any()
    synthetic = load_batches("synthetic", input_shape=(8,), num_classes=300, batch_size=2, batches=1, seed=0,
                             vocab_size=300)
    assert synthetic.kind == "synthetic" and synthetic.description.startswith("synthetic tokens")
    x, _ = synthetic.batches[0]
    assert x.shape == (2, 8) and x.max() < 300
    with pytest.raises(UserError) as e:
        load_batches("text", input_shape=(1, 8, 8), num_classes=10, batch_size=2, batches=1, seed=0)
    assert str(e.value) == ("Data 'text' is token ids, but the model does not take token ids: use --model "
                            "bert-tiny, bert-base, gpt-tiny or gpt-small (or a model that declares vocab_size)")
    with pytest.raises(UserError) as e:
        load_batches("tokens", input_shape=(8,), num_classes=100, batch_size=2, batches=1, seed=0, vocab_size=100)
    assert str(e.value) == ("Data 'tokens' uses a 261-token byte vocabulary, but the model's has 100: "
                            "use --num-classes 261 or more")


def test_train_config_pairs_models_with_their_data() -> None:
    with pytest.raises(TrainConfigError) as e:
        TrainConfig(model="bert-tiny", data="digits")
    assert str(e.value) == "Invalid data='digits': model 'bert-tiny' takes text or tokens"
    with pytest.raises(TrainConfigError) as e:
        TrainConfig(model="cnn", data="text")
    assert str(e.value) == "Invalid data='text': model 'cnn' takes digits or synthetic"


def test_evaluate_counts_only_masked_tokens() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    y = torch.full((3, 5), IGNORE_INDEX)
    y[0, 1], y[1, 4], y[2, 0], y[2, 3] = 2, 6, logits[2, 0].argmax(), 0
    model = torch.nn.Identity()
    loss, acc = evaluate(model, logits, y)
    picked = [(0, 1), (1, 4), (2, 0), (2, 3)]
    ref_loss = sum(-torch.log_softmax(logits[i, t], -1)[y[i, t]] for i, t in picked) / 4
    ref_acc = sum(int(logits[i, t].argmax() == y[i, t]) for i, t in picked) / 4
    assert loss == pytest.approx(float(ref_loss), rel=1e-6) and acc == pytest.approx(ref_acc)


def test_bert_tiny_trains_on_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few AdamW steps on short text sequences: masked-token loss falls, accuracy is over masked tokens."""
    x_train, y_train, x_test, y_test = mlm_split("text", seq_len=16)
    small = (x_train[:128], y_train[:128], x_test[:64], y_test[:64])
    monkeypatch.setattr(text, "mlm_split", lambda data: small)
    result = train(TrainConfig(model="bert-tiny", data="text", optimizer="adamw", lr=3e-3, epochs=2,
                               batch_size=32, eval_every=2, lr_schedule="constant"))
    assert result.stopped == "completed" and result.steps == 8
    first, last = result.records[0], result.records[-1]
    assert last.test_loss < first.test_loss < math.log(VOCAB_SIZE) + 1
    masked = small[3] != IGNORE_INDEX
    assert 0 <= last.test_accuracy <= 1 and int(masked.sum()) > 0


def small_text(monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, ...]:
    x_train, y_train, x_test, y_test = mlm_split("text", seq_len=16)
    small = (x_train[:64], y_train[:64], x_test[:32], y_test[:32])
    monkeypatch.setattr(text, "mlm_split", lambda data: small)
    return small


def test_thor_on_masked_lm_is_told_the_masked_token_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from thor_planner.optim import THOR

    small = small_text(monkeypatch)
    seen, real_step = [], THOR.step

    def step(self, closure=None, **kwargs):
        seen.append(kwargs.get("loss_samples"))
        return real_step(self, closure, **kwargs)

    monkeypatch.setattr(THOR, "step", step)
    torch.manual_seed(0)
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0)).split(32)  # the loop's shuffle, seed 0
    train(TrainConfig(model="bert-tiny", data="text", optimizer="thor-128", graft="adamw", lr=1e-3, epochs=1))
    assert seen == [int((small[1][idx] != IGNORE_INDEX).sum()) for idx in order]
    assert all(0 < n < 32 * 16 for n in seen)


def test_tune_runs_on_bert_tiny(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    pytest.importorskip("optuna")
    from thor_planner.tune import TuneConfig, run_tune

    small_text(monkeypatch)
    train = TrainConfig(model="bert-tiny", data="text", optimizer="thor-128", graft="adamw", epochs=1,
                        target_accuracy=1e-6)
    result = run_tune(TuneConfig(train=train, trials=1, storage=f"sqlite:///{tmp_path / 't.db'}", pruner="none"))
    assert result.best.user_attrs["stopped"] == "target" and 1e-4 <= result.best.params["lr"] <= 0.1
