"""The CUDA paths of packed ALBERT, DistilBERT and relative-position BERT (skipped without a GPU).

- ALBERT, DistilBERT (and BERT as the control) in bf16 go through flash attention's varlen kernel, the
  path bench/gpu_suite.sh already checks for BERT; judged as `bench/train_throughput.py --mode check`: the
  packed bf16 logits are as close to the fp32 padded logits as the padded bf16 logits are.
- The relative-position BERT cannot use that kernel (a per-pair distance term): on a GPU it takes one
  block-diagonal attention over the stream, exact in fp32 (TF32 off) against each feature run alone, and
  within bf16 error under autocast.
- torch.compile (inductor) of a packed training step equals the eager step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_packing import (
    LENGTHS,
    RELATIVE_KINDS,
    feature_row,
    make_features,
    packed_batches,
    packed_model,
    set_attention_dropout,
    tiny_model,
    type_kwargs,
)

from squad_internals import batching, packing

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """Exact fp32 comparisons: TF32 matmuls would round to 10 mantissa bits."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def bf16():
    return torch.autocast("cuda", dtype=torch.bfloat16)


def cuda_batches(features, model, **kwargs):
    batches = packed_batches(features, model, **kwargs)
    return batches, [batching.to_device(b, CUDA) for b in batches]


def per_feature_start_logits(model, features, amp=None) -> np.ndarray:
    """Each feature alone (no padding), flat like unpack_logits."""
    parts = []
    with torch.no_grad():
        for i in range(len(features)):
            ids, types = (t.to(CUDA) for t in feature_row(features, i))
            with amp or torch.autocast("cuda", enabled=False):
                parts.append(model(input_ids=ids, **type_kwargs(model, types)).start_logits[0].float().cpu().numpy())
    return np.concatenate(parts)


def packed_start_logits(packed, batches, on_device, num_tokens, amp=None) -> np.ndarray:
    with torch.no_grad(), amp or torch.autocast("cuda", enabled=False):
        starts = [packing.packed_forward(packed, b, packed.config.model_type)[0] for b in on_device]
    return batching.unpack_logits(starts, batches, num_tokens)


@pytest.fixture
def varlen_calls(monkeypatch):
    """Counts the calls of the varlen kernel wrapper (proof that the bf16 runs below took that path)."""
    calls = []
    kernel = packing._flash_varlen

    def spy(*args, **kwargs):
        calls.append(args[5])  # dropout
        return kernel(*args, **kwargs)

    monkeypatch.setattr(packing, "_flash_varlen", spy)
    return calls


@pytest.mark.parametrize("kind", ["bert", "albert", "distilbert"])
def test_varlen_kernel_bf16_logits_as_close_as_padded_bf16(kind, varlen_calls):
    features = make_features(LENGTHS)
    model = tiny_model(kind).to(CUDA)
    batches, on_device = cuda_batches(features, model)
    reference = per_feature_start_logits(model, features)
    padded_bf16 = per_feature_start_logits(model, features, bf16())
    packed = packed_model(model)
    packed_bf16 = packed_start_logits(packed, batches, on_device, len(features.input_ids), bf16())
    assert varlen_calls and not any(varlen_calls)
    padded_error = np.abs(padded_bf16 - reference).max()
    packed_error = np.abs(packed_bf16 - reference).max()
    assert packed_error <= 2 * padded_error + 1e-4, (packed_error, padded_error)
    # fp32 on the GPU is not the kernel's dtype: the exact block-diagonal path, equal to the reference.
    packed_fp32 = packed_start_logits(packed, batches, on_device, len(features.input_ids))
    np.testing.assert_allclose(packed_fp32, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["albert", "distilbert"])
def test_varlen_kernel_with_dropout_trains(kind, varlen_calls):
    """Attention dropout on: the aten flash kernel with dropout, finite loss and gradients."""
    features = make_features(LENGTHS)
    model = tiny_model(kind).to(CUDA)
    set_attention_dropout(model, 0.1)
    packing.enable_packed_attention(model, attention_dropout=True)
    model.train()
    _, on_device = cuda_batches(features, model)
    with bf16():
        start, end = packing.packed_forward(model, on_device[0], model.config.model_type)
    loss = packing.packed_qa_loss(start, end, on_device[0])
    loss.backward()
    assert varlen_calls and all(d == pytest.approx(0.1) for d in varlen_calls)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("kind", RELATIVE_KINDS)
def test_relative_block_diagonal_on_cuda_equals_each_feature_alone(kind, varlen_calls):
    features = make_features(LENGTHS, seed=3)
    model = tiny_model(kind).to(CUDA)
    # A stream longer than max_position_embeddings: distances must be taken inside each feature.
    batches, on_device = cuda_batches(features, model, tokens_per_pack=160)
    packed = packed_model(model)
    reference = per_feature_start_logits(model, features)
    flat = packed_start_logits(packed, batches, on_device, len(features.input_ids))
    np.testing.assert_allclose(flat, reference, atol=1e-5, rtol=0)
    padded_bf16 = per_feature_start_logits(model, features, bf16())
    packed_bf16 = packed_start_logits(packed, batches, on_device, len(features.input_ids), bf16())
    assert np.abs(packed_bf16 - reference).max() <= 2 * np.abs(padded_bf16 - reference).max() + 1e-4
    assert not varlen_calls  # no flash kernel: it cannot add the distance term

    # Loss and gradients of one step, fp32, against HF's loss on each feature alone.
    model.train().zero_grad()
    packed.train().zero_grad()
    ref_total = total = 0.0
    for b, d in zip(batches, on_device, strict=True):
        losses = []
        for i in b["feature_index"][b["feature_valid"]].tolist():
            ids, types = (t.to(CUDA) for t in feature_row(features, i))
            losses.append(model(input_ids=ids, **type_kwargs(model, types),
                                start_positions=torch.tensor([int(features.start_positions[i])], device=CUDA),
                                end_positions=torch.tensor([int(features.end_positions[i])], device=CUDA)).loss)
        loss = torch.stack(losses).mean()
        loss.backward()
        ref_total += loss.item()
        start, end = packing.packed_forward(packed, d, model.config.model_type)
        loss = packing.packed_qa_loss(start, end, d)
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(ref_total, abs=1e-5)
    reference_params = dict(model.named_parameters())
    for name, p in packed.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, reference_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind, amp", [("relative_key_query", False), ("albert", True), ("distilbert", True)])
def test_inductor_compiled_packed_step_equals_eager_on_cuda(kind, amp):
    features = make_features([17, 40, 5, 23, 9])
    model = tiny_model(kind).to(CUDA).train()
    eager, compiled = packed_model(model).train(), packed_model(model).train()
    _, on_device = cuda_batches(features, model, tokens_per_pack=96)
    batch = on_device[0]

    def step(m, b):
        with bf16() if amp else torch.autocast("cuda", enabled=False):
            start, end = packing.packed_forward(m, b, m.config.model_type)
        return packing.packed_qa_loss(start, end, b), start.float()

    loss, start = step(eager, batch)
    loss.backward()
    compiled_loss, compiled_start = torch.compile(step)(compiled, batch)
    compiled_loss.backward()
    tolerance = dict(atol=2e-2, rtol=2e-2) if amp else dict(atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(compiled_start, start, **tolerance)
    torch.testing.assert_close(compiled_loss, loss, **tolerance)
    reference = dict(eager.named_parameters())
    for name, p in compiled.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, reference[name].grad, **tolerance, msg=name)
