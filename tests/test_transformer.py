"""BERT masked LMs: parameter count against the published configuration, shapes, fused/separate
Q/K/V, the output-projection rule, ``hf:`` models, and a ``bert-tiny`` profile end to end."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from thor_planner.capture.collector import find_layers
from thor_planner.inputs.models import load_model
from thor_planner.inputs.transformer import (BERT_BASE, BERT_TINY, MAX_PLANNED_DIM, BertConfig, BertForMaskedLM,
                                             planner_skips)
from thor_planner.profiling.profiler import ProfileConfig, run_profile
from thor_planner.timing.candidates import TimingConfig
from thor_planner.utils.errors import UserError

try:
    import transformers  # noqa: F401
    HAS_TRANSFORMERS = True
except Exception:  # noqa: BLE001
    HAS_TRANSFORMERS = False


pytestmark = pytest.mark.usefixtures("one_thread")


def test_bert_base_parameter_count_matches_the_published_configuration() -> None:
    # BERT-base (Devlin et al. 2019): L=12, H=768, A=12, intermediate 4H, WordPiece vocab 30522,
    # 512 positions, 2 segment types.
    v, h, i, layers, positions, types = 30522, 768, 3072, 12, 512, 2
    embeddings = v * h + positions * h + types * h + 2 * h                 # three tables + LayerNorm
    attention = 3 * (h * h + h) + (h * h + h) + 2 * h                       # Q, K, V, output, LayerNorm
    feed_forward = (h * i + i) + (i * h + h) + 2 * h                        # up, down, LayerNorm
    pooler = h * h + h
    # The encoder with its pooler is the "110M" of the paper (Hugging Face's BertModel: 109,482,240).
    assert embeddings + layers * (attention + feed_forward) + pooler == 109_482_240
    mlm_head = (h * h + h) + 2 * h + v                                      # transform, LayerNorm, decoder bias
    expected = embeddings + layers * (attention + feed_forward) + mlm_head  # decoder weight tied: no v*h
    loaded = load_model("bert-base")
    assert loaded.num_params == expected == 109_514_298
    assert loaded.source == "builtin" and loaded.input_shape == (128,) and loaded.vocab_size == 30522
    model = loaded.model
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    specs, _ = find_layers(model)
    dims = sorted({(s.a_dim, s.g_dim) for s in specs})
    assert len(specs) == 12 * 6 + 2  # Q, K, V, attention output, up, down per layer; transform; decoder
    assert dims == [(769, 768), (769, 3072), (769, 30522), (3073, 768)]
    assert list(loaded.planner_skips) == ["cls.predictions.decoder"]
    assert loaded.planner_skips["cls.predictions.decoder"] == (
        "output projection tied to the word embeddings (768→30522, factors A 769, G 30522; G would be "
        "3.73 GB in float32, ≈ 2.8e+13 flop to invert densely): its gradient also holds the embedding's, "
        "so it takes the first-order update")


def test_bert_tiny_shapes_and_names() -> None:
    loaded = load_model("bert-tiny")
    model = loaded.model
    assert loaded.vocab_size == loaded.num_classes == 261 and loaded.planner_skips == {}
    assert loaded.num_params == sum(p.numel() for p in model.parameters())
    logits = model(torch.randint(0, 261, (3, 20)))
    assert logits.shape == (3, 20, 261)
    names = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert names["bert.encoder.layer.1.attention.self.query"] == (128, 128)
    assert names["bert.encoder.layer.0.intermediate.dense"] == (128, 512)
    assert names["bert.encoder.layer.0.output.dense"] == (512, 128)
    assert names["cls.predictions.decoder"] == (128, 261)
    assert len(names) == 2 * 6 + 2
    assert not any(isinstance(m, (nn.Conv2d,)) for m in model.modules())


def test_fused_qkv_computes_the_same_function() -> None:
    cfg = replace(BERT_TINY, dropout=0.0, seq_len=12)
    torch.manual_seed(0)
    separate = BertForMaskedLM(cfg).eval()
    fused = BertForMaskedLM(replace(cfg, fused_qkv=True)).eval()
    state = dict(separate.state_dict())
    for k in range(cfg.num_layers):
        p = f"bert.encoder.layer.{k}.attention.self."
        for what in ("weight", "bias"):
            state[p + "qkv." + what] = torch.cat([state.pop(p + f"{n}.{what}") for n in ("query", "key", "value")])
    fused.load_state_dict(state, strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    torch.testing.assert_close(fused(ids), separate(ids), rtol=1e-5, atol=1e-5)
    specs = {s.name: s for s in find_layers(fused)[0]}
    assert (specs["bert.encoder.layer.0.attention.self.qkv"].a_dim,
            specs["bert.encoder.layer.0.attention.self.qkv"].g_dim) == (129, 384)


def test_config_validation() -> None:
    with pytest.raises(ValueError) as e:
        BertConfig(num_heads=5)
    assert str(e.value) == "Invalid num_heads=5: must divide hidden_size=768"
    with pytest.raises(ValueError) as e:
        BertConfig(num_layers=0)
    assert str(e.value) == "Invalid num_layers=0: must be an integer >= 1"
    with pytest.raises(ValueError) as e:
        BertConfig(seq_len=1024)
    assert str(e.value) == "Invalid seq_len=1024: must be <= max_position=512"
    with pytest.raises(ValueError) as e:
        BertConfig(dropout=1.0)
    assert str(e.value) == "Invalid dropout=1.0: must be in [0, 1)"
    assert BERT_BASE.hidden_size == 768 and BERT_BASE.intermediate_size == 3072


def test_large_untied_output_projection_is_left_to_first_order() -> None:
    cfg = BertConfig(vocab_size=MAX_PLANNED_DIM + 1, hidden_size=16, num_layers=1, num_heads=2,
                     intermediate_size=32, seq_len=8, tie_word_embeddings=False)
    skips = planner_skips(BertForMaskedLM(cfg))
    assert skips == {"cls.predictions.decoder": (
        "factor dimension 8193 above 8192 (16→8193, factors A 17, G 8193; 0.269 GB in float32, ≈ 5.5e+11 "
        "flop to invert densely): takes the first-order update")}
    assert planner_skips(BertForMaskedLM(replace(cfg, vocab_size=MAX_PLANNED_DIM))) == {}


def _profile(model: str, **kw):
    cfg = ProfileConfig(model=model, batches=1, batch_size=2, input_size=16, device="cpu",
                        candidates=(1, 16, 64), timing=TimingConfig(budget_s=0.01), **kw)
    return run_profile(cfg)


def test_bert_tiny_profile_end_to_end() -> None:
    measurements, captured = _profile("bert-tiny")
    meta = measurements.meta
    assert meta["capture"]["data"] == "synthetic" and meta["capture"]["input_shape"] == [16]
    assert meta["capture"]["data_description"].startswith("synthetic tokens")
    assert meta["model"] == {"name": "bert-tiny", "source": "builtin", "num_params": 546_437}
    assert meta["skipped"] == []
    names = {s.name for s in captured.specs}
    assert len(names) == 14 and "cls.predictions.decoder" in names
    for s in captured.specs:
        a, g = captured.a[s.name], captured.g[s.name]
        assert a.shape == (s.a_dim, s.a_dim) and g.shape == (s.g_dim, s.g_dim)
        assert torch.isfinite(a).all() and torch.isfinite(g).all()
        assert a[-1, -1] == pytest.approx(1.0)  # the bias column of A averages ones over every token
    assert set(measurements.losses["layer"]) == names
    assert list(measurements.timings["candidate"]) == [1, 16, 64]


def test_tied_output_projection_is_listed_as_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tp_bert_tied.py").write_text(
        "from thor_planner.inputs.transformer import BertConfig, BertForMaskedLM\n"
        "def make():\n"
        "    return BertForMaskedLM(BertConfig(vocab_size=300, hidden_size=16, num_layers=1, num_heads=2,\n"
        "                                      intermediate_size=32, seq_len=16))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tp_bert_tied", raising=False)
    measurements, captured = _profile("tp_bert_tied:make", data="text", skip="intermediate")
    skipped = {s["name"]: s["reason"] for s in measurements.meta["skipped"]}
    assert skipped["cls.predictions.decoder"].startswith("output projection tied to the word embeddings (16→300")
    assert skipped["bert.encoder.layer.0.intermediate.dense"] == "matched --skip 'intermediate'"
    assert len(skipped) == 2 and len(captured.specs) == 6  # Q, K, V, attention output, down; transform
    assert measurements.meta["capture"]["data"] == "text"


def test_hf_models_need_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError) as e:
        load_model("hf:bert")
    assert str(e.value) == ("Model 'hf:bert' needs transformers, which does not import here: pip install "
                            "transformers, or use a built-in model (bert-base, bert-tiny)")


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
def test_hf_bert_from_a_config_file(tmp_path: Path) -> None:
    config = transformers.BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    config.save_pretrained(tmp_path)
    loaded = load_model(f"hf:{tmp_path}")
    assert loaded.source == "hf" and loaded.vocab_size == 300 and loaded.input_shape == (64,)
    assert loaded.model(torch.randint(0, 300, (2, 8))).shape == (2, 8, 300)
    assert any(name.endswith("cls.predictions.decoder") for name in loaded.planner_skips)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed")
def test_builtin_bert_is_hugging_face_bert() -> None:
    assert load_model("hf:bert").num_params == load_model("bert-base").num_params
    config = transformers.BertConfig(vocab_size=300, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    theirs = transformers.BertForMaskedLM(config).eval()
    ours = BertForMaskedLM(BertConfig(vocab_size=300, hidden_size=16, num_layers=2, num_heads=2,
                                      intermediate_size=32, max_position=64, seq_len=16)).eval()
    state = dict(theirs.state_dict())
    state.pop("cls.predictions.bias")  # Hugging Face's alias of cls.predictions.decoder.bias
    ours.load_state_dict(state, strict=True)
    ids = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(ours(ids), theirs(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
