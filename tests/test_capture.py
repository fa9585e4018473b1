import torch
import torch.nn.functional as F
from torch import nn

from thor_planner.capture.collector import FactorCollector, capture_factors, find_layers


class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1, bias=True)
        self.conv2 = nn.Conv2d(3, 4, 2, stride=1, padding=0, dilation=2, bias=False)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = self.grouped(self.conv2(h))
        return self.fc(h.mean(dim=(2, 3)))


def reference_factors(model, x, y):
    """A and G written plainly: unfold, outer products, per-sample gradients of a mean loss."""
    acts, grads = {}, {}
    h1 = model.conv(x)
    r1 = torch.relu(h1)
    h2 = model.conv2(r1)
    g2 = model.grouped(h2)
    pooled = g2.mean(dim=(2, 3))
    out = model.fc(pooled)
    for t in (h1, h2, out):
        t.retain_grad()
    F.cross_entropy(out, y).backward()
    b = x.shape[0]
    cols1 = F.unfold(x, 3, 1, 1, 2).transpose(1, 2).reshape(-1, 18)
    cols1 = torch.cat([cols1, torch.ones(cols1.shape[0], 1, dtype=x.dtype)], 1)
    cols2 = F.unfold(r1.detach(), 2, 2, 0, 1).transpose(1, 2).reshape(-1, 12)
    fc_in = torch.cat([pooled.detach(), torch.ones(b, 1, dtype=x.dtype)], 1)
    for name, cols, grad, conv in (("conv", cols1, h1.grad, True), ("conv2", cols2, h2.grad, True),
                                   ("fc", fc_in, out.grad, False)):
        acts[name] = sum(torch.outer(r, r) for r in cols) / cols.shape[0]
        per_sample = (b * grad)  # gradient of each sample's own loss
        rows = per_sample.permute(0, 2, 3, 1).reshape(b, -1, grad.shape[1]) if conv else per_sample[:, None]
        grads[name] = sum(sum(torch.outer(g, g) for g in rows[n]) for n in range(b)) / b
    return acts, grads


def test_capture_equals_plain_reference():
    torch.manual_seed(0)
    model = TinyConvNet().double()
    x, y = torch.randn(3, 2, 9, 9, dtype=torch.float64), torch.tensor([0, 3, 1])
    collector = FactorCollector(model, find_layers(model)[0], dtype=torch.float64)
    collector.active = True
    F.cross_entropy(model(x), y).backward()
    a, g = collector.factors()
    model.zero_grad()
    ref_a, ref_g = reference_factors(model, x, y)
    for name in ("conv", "conv2", "fc"):
        torch.testing.assert_close(a[name], ref_a[name])
        torch.testing.assert_close(g[name], ref_g[name])


def test_grouped_conv_and_skip_are_listed():
    specs, skipped = find_layers(TinyConvNet(), skip="^fc$")
    assert [s.name for s in specs] == ["conv", "conv2"]
    assert skipped == [
        {"name": "grouped", "reason": "grouped convolution (groups=2) is not supported; trained with SGD"},
        {"name": "fc", "reason": "matched --skip '^fc$'"},
    ]
    assert (specs[0].a_dim, specs[0].g_dim, specs[0].has_bias) == (19, 3, True)


def test_linear_on_3d_inputs_and_model_left_untouched():
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(5), nn.Flatten(), nn.Linear(20, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(2, 5, 6), torch.tensor([0, 1]))]
    captured = capture_factors(model, batches, fisher="empirical")
    assert captured.a["0"].shape == (7, 7) and captured.g["0"].shape == (4, 4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_hooks_are_idle_in_eval_mode_or_when_inactive():
    model = nn.Sequential(nn.Linear(3, 2))
    collector = FactorCollector(model, find_layers(model)[0])
    model(torch.randn(4, 3)).sum().backward()  # inactive
    collector.active = True
    model.eval()
    model(torch.randn(4, 3)).sum().backward()
    assert collector.factors() == ({}, {})


def test_captured_rows_are_one_batchs_gram_rows():
    """Per layer, the rows one batch gives A's and G's Grams (what a training step's capture costs):
    a convolution's N·oh·ow positions (9×9 at stride 2, padding 1 → 5×5; then a 2×2 kernel at
    dilation 2 → 3×3), a Linear's batch rows (each position of a sequence a row); the mean over batches."""
    batches = [(torch.randn(3, 2, 9, 9), torch.tensor([0, 3, 1])), (torch.randn(3, 2, 9, 9), torch.tensor([1, 1, 2]))]
    captured = capture_factors(TinyConvNet(), batches, fisher="empirical")
    assert captured.rows == {"conv": (3 * 25, 3 * 25), "conv2": (3 * 9, 3 * 9), "fc": (3, 3)}
    seq = capture_factors(nn.Sequential(nn.Linear(6, 4), nn.Flatten(), nn.Linear(20, 3)),
                          [(torch.randn(2, 5, 6), torch.tensor([0, 1]))], fisher="empirical")
    assert seq.rows == {"0": (10, 10), "2": (2, 2)}
