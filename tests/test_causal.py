"""Byte-level causal LMs (``gpt-tiny``, ``gpt-small``) and the standard-library corpus: parameter
counts written out by hand, a plainly written reference forward, causality, the file split, next-byte
windows, the profiler's batches and ``thor-plan profile --model gpt-tiny --data stdlib`` end to end."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_cli import assert_fails, invoke
from thor_planner.capture.collector import find_layers
from thor_planner.capture.layers import tied_layers
from thor_planner.inputs import stdlib
from thor_planner.inputs.causal import GPT, GPT_SMALL, GPT_TINY, GPTConfig, gpt_small, gpt_tiny
from thor_planner.inputs.data import load_batches
from thor_planner.inputs.models import BUILTIN_MODELS, load_model
from thor_planner.planning.plan import Plan
from thor_planner.utils.errors import UserError

TINY_LINEARS = [f"blocks.{i}.{n}" for i in range(4) for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")]
TINY_LINEARS += ["lm_head"]


# ----------------------------------------------------------------------------------- models


def gpt_parameters(vocab: int, context: int, layers: int, d: int) -> int:
    embeddings = vocab * d + context * d                     # wte, wpe
    block = (2 * d                                           # ln_1
             + d * 3 * d + 3 * d                             # attn.qkv
             + d * d + d                                     # attn.proj
             + 2 * d                                         # ln_2
             + d * 4 * d + 4 * d                             # mlp.fc
             + 4 * d * d + d)                                # mlp.proj
    return embeddings + layers * block + 2 * d + d * vocab   # ln_f, lm_head (no bias)


def test_parameter_counts() -> None:
    assert gpt_parameters(256, 128, 4, 128) == 875_264
    assert gpt_parameters(256, 1024, 12, 768) == 86_235_648
    loaded = load_model("gpt-tiny")
    assert loaded.num_params == sum(p.numel() for p in gpt_tiny().parameters()) == 875_264
    with torch.device("meta"):  # no memory, no time: the shapes are what is counted
        assert sum(p.numel() for p in gpt_small().parameters()) == 86_235_648
    assert GPT_SMALL.n_layer == 12 and GPT_SMALL.n_embd == 768 and GPT_SMALL.n_head == 12 and GPT_SMALL.context == 1024
    assert BUILTIN_MODELS["gpt-small"].input_shape == (1024,) and BUILTIN_MODELS["gpt-tiny"].input_shape == (128,)


def test_names_factors_and_what_the_profiler_learns() -> None:
    loaded = load_model("gpt-tiny")
    model = loaded.model
    assert (loaded.vocab_size, loaded.num_classes, loaded.input_shape) == (256, 256, (128,))
    assert loaded.objective == "causal" and loaded.planner_skips == {}
    assert load_model("bert-tiny").objective == "masked" and load_model("mlp").objective is None
    specs, skipped = find_layers(model)
    assert [s.name for s in specs] == TINY_LINEARS and skipped == []
    assert tied_layers(model) == set()
    assert sorted({(s.a_dim, s.g_dim) for s in specs}) == [(128, 256), (129, 128), (129, 384), (129, 512), (513, 128)]
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linears == set(TINY_LINEARS)
    names = dict(model.named_modules())
    assert all(k in names for k in ("wte", "wpe", "blocks.3.ln_1", "blocks.3.ln_2", "ln_f"))
    separate = GPT(replace(GPT_TINY, fused_qkv=False))
    assert {"blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"} <= {s.name for s in find_layers(separate)[0]}


def reference_logits(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    """GPT-2's forward written plainly: explicit causal mask, softmax attention, pre-LayerNorm."""
    c = model.config
    b, t = ids.shape
    h, dh = c.n_head, c.n_embd // c.n_head
    x = model.wte.weight[ids] + model.wpe.weight[:t]
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    for blk in model.blocks:
        a = F.layer_norm(x, (c.n_embd,), blk.ln_1.weight, blk.ln_1.bias, c.layer_norm_eps)
        q, k, v = (a @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(c.n_embd, dim=-1)
        q, k, v = (z.reshape(b, t, h, dh).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / math.sqrt(dh)).masked_fill(future, float("-inf"))
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c.n_embd)
        x = x + att @ blk.attn.proj.weight.T + blk.attn.proj.bias
        m = F.layer_norm(x, (c.n_embd,), blk.ln_2.weight, blk.ln_2.bias, c.layer_norm_eps)
        x = x + F.gelu(m @ blk.mlp.fc.weight.T + blk.mlp.fc.bias) @ blk.mlp.proj.weight.T + blk.mlp.proj.bias
    x = F.layer_norm(x, (c.n_embd,), model.ln_f.weight, model.ln_f.bias, c.layer_norm_eps)
    return x @ model.lm_head.weight.T


def test_forward_matches_a_plain_reference_and_is_causal() -> None:
    torch.manual_seed(0)
    model = GPT(replace(GPT_TINY, n_layer=2, context=24)).eval()
    ids = torch.randint(0, 256, (3, 24))
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (3, 24, 256) and logits.dtype == torch.float32
        torch.testing.assert_close(logits, reference_logits(model, ids), rtol=1e-4, atol=1e-5)
        for t in (0, 7, 22):
            changed = ids.clone()
            changed[:, t + 1:] = torch.randint(0, 256, (3, 23 - t))
            other = model(changed)
            torch.testing.assert_close(other[:, :t + 1], logits[:, :t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(other[:, t + 1:], logits[:, t + 1:])
        assert model(ids[:, :5]).shape == (3, 5, 256)  # shorter sequences than the context are fine


def test_fused_and_separate_qkv_compute_the_same_function() -> None:
    cfg = replace(GPT_TINY, n_layer=2, context=12)
    torch.manual_seed(0)
    fused = GPT(cfg).eval()
    separate = GPT(replace(cfg, fused_qkv=False)).eval()
    state = dict(fused.state_dict())
    for i in range(cfg.n_layer):
        p = f"blocks.{i}.attn."
        for what in ("weight", "bias"):
            for name, part in zip("qkv", state.pop(p + "qkv." + what).split(cfg.n_embd)):
                state[f"{p}{name}.{what}"] = part
    separate.load_state_dict(state, strict=True)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(separate(ids), fused(ids), rtol=1e-5, atol=1e-5)


def test_initialisation_is_gpt2s_and_deterministic() -> None:
    torch.manual_seed(3)
    a = gpt_tiny().state_dict()
    torch.manual_seed(3)
    b = gpt_tiny().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    residual = 0.02 / math.sqrt(2 * 4)
    for name, std in (("blocks.0.attn.qkv.weight", 0.02), ("blocks.1.mlp.fc.weight", 0.02), ("wte.weight", 0.02),
                      ("blocks.2.attn.proj.weight", residual), ("blocks.3.mlp.proj.weight", residual)):
        assert float(a[name].std()) == pytest.approx(std, rel=0.05), name
    assert torch.all(a["blocks.0.mlp.fc.bias"] == 0) and torch.all(a["ln_f.weight"] == 1)
    assert "lm_head.bias" not in a


def test_config_validation() -> None:
    cases = [({"n_layer": 0}, "Invalid n_layer=0: must be >= 1"),
             ({"vocab_size": 0}, "Invalid vocab_size=0: must be >= 1"),
             ({"n_head": 5}, "Invalid n_head=5: must divide n_embd=768"),
             ({"dropout": 1.0}, "Invalid dropout=1.0: must be in [0, 1)"),
             ({"layer_norm_eps": 0.0}, "Invalid layer_norm_eps=0.0: must be > 0")]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as e:
            GPTConfig(**kwargs)
        assert str(e.value) == message
    with pytest.raises(ValueError) as e:
        GPT(replace(GPT_TINY, n_layer=1))(torch.zeros(1, 129, dtype=torch.long))
    assert str(e.value) == "Sequence length 129 exceeds the model's context of 128 positions"


# ----------------------------------------------------------------------------------- corpus


def is_test_folder(name: str) -> bool:
    return name in ("test", "tests") or name.endswith(("_test", "_tests"))


def test_corpus_files_are_the_standard_library_without_tests_or_packages() -> None:
    root = Path(stdlib.stdlib_root())
    files = stdlib.corpus_files()
    assert files == sorted(files) and len(files) == len(set(files))
    for rel in files:
        folders = rel.split("/")[:-1]
        assert not any(is_test_folder(f) or f in ("site-packages", "dist-packages") for f in folders), rel
    assert {"os.py", "json/decoder.py", "unittest/case.py", "doctest.py"} <= set(files)
    expected = sorted(os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
                      for folder, subs, names in os.walk(root)
                      if not any(is_test_folder(p) or p in ("site-packages", "dist-packages")
                                 for p in Path(os.path.relpath(folder, root)).parts)
                      for f in names if f.endswith(".py"))
    assert files == expected


def test_split_is_by_file_stable_and_a_fixed_hash() -> None:
    corpus = stdlib.load_corpus()
    assert stdlib.load_corpus() is corpus  # cached per process
    train, validation = set(corpus.train_files), set(corpus.validation_files)
    assert not train & validation and sorted(train | validation) == stdlib.corpus_files()
    recomputed = {f for f in stdlib.corpus_files()
                  if int.from_bytes(hashlib.sha256(f.encode()).digest()[:8], "big") % 10 == 0}
    assert validation == recomputed
    assert 0.05 < len(validation) / len(stdlib.corpus_files()) < 0.15
    again = stdlib.build_corpus()
    assert (again.train_files, again.validation_files, again.sha256) == (corpus.train_files, corpus.validation_files,
                                                                        corpus.sha256)
    assert torch.equal(again.train, corpus.train) and torch.equal(again.validation, corpus.validation)
    root = Path(corpus.root)
    assert bytes(corpus.validation.numpy()) == b"".join((root / f).read_bytes() for f in corpus.validation_files)
    digest = hashlib.sha256()
    for f in sorted(train | validation):
        content = (root / f).read_bytes()
        digest.update(f.encode() + b"\0" + str(len(content)).encode() + b"\0" + content)
    assert corpus.sha256 == digest.hexdigest()


def test_split_is_the_same_in_another_process() -> None:
    code = ("import json; from thor_planner.inputs.stdlib import load_corpus; c = load_corpus(); "
            "print(json.dumps([c.describe(), list(c.validation_files)]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    corpus = stdlib.load_corpus()
    assert json.loads(out.stdout) == [corpus.describe(), list(corpus.validation_files)]


def test_describe() -> None:
    corpus = stdlib.load_corpus()
    info = corpus.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["name"] == "stdlib" and info["python"] == platform.python_version()
    assert info["files"] == len(stdlib.corpus_files()) == info["train_files"] + info["validation_files"]
    assert info["train_bytes"] == len(corpus.train) and info["validation_bytes"] == len(corpus.validation)
    root = Path(corpus.root)
    assert info["total_bytes"] == sum((root / f).stat().st_size for f in stdlib.corpus_files()) == corpus.total_bytes
    assert len(info["sha256"]) == 64 and "% 10 == 0" in info["split_rule"]
    assert corpus.train.dtype == corpus.validation.dtype == torch.uint8


def test_windows_hold_the_next_byte() -> None:
    corpus = stdlib.load_corpus()
    x, y = stdlib.train_windows(corpus, 6, 40, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (6, 40) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    train = bytes(corpus.train.numpy())
    for row_x, row_y in zip(x, y):
        assert bytes(row_x.tolist() + [int(row_y[-1])]) in train  # y's last byte follows x's in the text
    x2, _ = stdlib.train_windows(corpus, 6, 40, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)

    vx, vy = stdlib.validation_windows(corpus, 16, 64)
    assert vx.shape == vy.shape == (16, 64) and torch.equal(vy[:, :-1], vx[:, 1:])
    starts = stdlib.validation_starts(len(corpus.validation), 16, 64)
    for s, row_x, row_y in zip(starts.tolist(), vx, vy):
        assert torch.equal(row_x, corpus.validation[s:s + 64].long()) and int(row_y[-1]) == corpus.validation[s + 64]
    gaps = starts.diff()
    assert torch.all(gaps == gaps[0]) and int(starts[-1]) + 64 < len(corpus.validation)
    again = stdlib.validation_windows(corpus, 16, 64)
    assert torch.equal(again[0], vx) and torch.equal(again[1], vy)
    assert not torch.equal(stdlib.validation_windows(corpus, 16, 64, seed=1)[0], vx)
    with pytest.raises(ValueError) as e:
        stdlib.train_windows(corpus, 0, 8, torch.Generator())
    assert str(e.value) == "Invalid batch=0: must be >= 1"


def test_bits_per_byte() -> None:
    assert stdlib.bits_per_byte(math.log(256)) == pytest.approx(8.0)
    assert float(stdlib.bits_per_byte(torch.tensor(math.log(2)))) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------- product


def test_profiler_batches_for_causal_models() -> None:
    src = load_batches("stdlib", input_shape=(32,), num_classes=256, batch_size=4, batches=2, seed=1,
                       vocab_size=256, objective="causal")
    assert src.kind == "stdlib" and len(src.batches) == 2
    assert src.description.startswith(f"stdlib (Python {platform.python_version()}'s standard-library source")
    for x, y in src.batches:
        assert x.shape == y.shape == (4, 32) and torch.equal(y[:, :-1], x[:, 1:])
    synthetic = load_batches("synthetic", input_shape=(16,), num_classes=256, batch_size=2, batches=1, seed=0,
                             vocab_size=256, objective="causal")
    x, y = synthetic.batches[0]
    assert synthetic.kind == "synthetic" and synthetic.description.startswith("synthetic bytes")
    assert x.shape == y.shape == (2, 16) and torch.equal(y[:, :-1], x[:, 1:]) and 0 <= x.min() and x.max() < 256
    errors = [
        (dict(data="stdlib", vocab_size=261, objective="masked"),
         "Data 'stdlib' is next-byte prediction for causal LMs, but the model is a masked LM: use --model gpt-tiny "
         "or gpt-small, or --data text"),
        (dict(data="text", vocab_size=256, objective="causal"),
         "Data 'text' is masked-LM sequences, but the model is a causal LM: use --data stdlib (or tokens)"),
        (dict(data="tokens", vocab_size=100, objective="causal"),
         "Data 'tokens' is bytes (ids 0-255), but the model's vocabulary has 100: use --num-classes 256 or more"),
    ]
    for kwargs, message in errors:
        with pytest.raises(UserError) as e:
            load_batches(input_shape=(8,), num_classes=kwargs["vocab_size"], batch_size=2, batches=1, seed=0, **kwargs)
        assert str(e.value) == message


def test_profile_gpt_tiny_on_stdlib(tmp_path: Path) -> None:
    out = tmp_path / "gpt"
    args = ["profile", "--model", "gpt-tiny", "--data", "stdlib", "--batches", "1", "--batch-size", "2",
            "--input-size", "32", "--time-budget", "0.01", "--candidates", "1,16,64", "--device", "cpu"]
    result = invoke(*args, "--out", out)
    assert result.exit_code == 0, result.output
    plan = Plan.load(out / "plan.json")
    assert plan.model == {"name": "gpt-tiny", "source": "builtin", "num_params": 875_264}
    assert plan.capture["data"] == "stdlib" and plan.capture["input_shape"] == [32]
    assert [lp.name for lp in plan.layers] == TINY_LINEARS and plan.skipped == []
    too_long = tmp_path / "long"
    assert_fails(invoke(*[a if a != "32" else "129" for a in args], "--out", too_long),
                 "Model 'gpt-tiny' cannot take the inputs of data 'stdlib' (shape 129; it takes 128): ValueError: "
                 "Sequence length 129 exceeds the model's context of 128 positions: pass data shaped as the model "
                 "expects")
    assert not too_long.exists()
