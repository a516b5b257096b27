"""Precision of the learner's reduced-precision path, checked on CPU (issue 17 item 6): under
bf16 autocast the bin critic's expected value stays fp32 (autocast would otherwise run the
``softmax @ bins`` matmul in bf16, 0.5-7% off after symexp), and the GRU's recurrence runs
in fp32. ``torch.autocast("cpu", dtype=torch.bfloat16)`` applies the same cast policy to
``@`` as CUDA autocast does."""

from __future__ import annotations

import torch

from learner.config import ModelConfig
from learner.losses import symexp, symlog, twohot, twohot_value
from learner.model import GRUEncoder


def _bins():
    return torch.linspace(
        float(symlog(torch.tensor(-200.0))), float(symlog(torch.tensor(200.0))), 51
    )


def test_autocast_really_lowers_matmul_precision_on_cpu():
    """The hazard itself: without the guard, ``softmax @ bins`` comes out in bf16."""
    p, b = torch.softmax(torch.randn(8, 51), -1), _bins()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (p @ b).dtype == torch.bfloat16


def test_twohot_value_is_fp32_and_exact_under_bf16_autocast():
    gen = torch.Generator().manual_seed(0)
    bins = _bins()
    y = torch.empty(4096).uniform_(-150.0, 150.0, generator=gen)
    logits = torch.log(twohot(symlog(y), bins) + 1e-12) + 0.3 * torch.randn(4096, 51, generator=gen)
    ref = twohot_value(logits.double(), bins.double())  # fp64 reference, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = twohot_value(logits, bins)
        unguarded = symexp(torch.softmax(logits.float(), -1) @ bins)
    assert got.dtype == torch.float32
    rel = ((got.double() - ref) / ref.abs().clamp_min(1.0)).abs().max()
    assert rel < 1e-5
    bad = ((unguarded.double() - ref) / ref.abs().clamp_min(1.0)).abs().max()
    assert bad > 1e-3  # what the guard prevents (the check can fail)


def test_twohot_value_of_bf16_logits_is_fp32():
    logits = torch.randn(3, 51).to(torch.bfloat16)
    assert twohot_value(logits, _bins()).dtype == torch.float32


def test_gru_encoder_recurrence_runs_in_fp32_under_autocast():
    cfg = ModelConfig(encoder="gru", d_model=32, n_layers=1)
    enc = GRUEncoder(8, cfg).eval()  # no dropout: the two passes must be comparable
    x, t = torch.randn(2, 64, 8), torch.arange(64).expand(2, 64)
    seen = []
    enc.gru.register_forward_hook(lambda m, inp, out: seen.append((inp[0].dtype, out[0].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(x, t)
    assert seen == [(torch.float32, torch.float32)]
    ref = enc(x, t)  # no autocast
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.1)  # only the bf16 input projection differs
