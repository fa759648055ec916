"""On a GPU: an optimizer step of the command line's loop waits for nothing. Each step's copy of the batch,
forward, loss, backward, clipping, finiteness test, fused AdamW update (skipped on the device when not finite)
and zero_grad run under torch.cuda.set_sync_debug_mode("error"), which raises at any call that makes the host
wait for the GPU (a .item(), a device-to-host copy, a boolean read, nonzero, ...). Skipped without CUDA."""

import numpy as np
import pytest
import torch
from test_fast_path import synthetic_features
from transformers import AutoModelForQuestionAnswering

from squad_internals import batching, qa_model
from tiny_models import tiny_config, tiny_tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def one_step(model, strategy, batch, optimizer, params) -> None:
    """run_squad.train's optimizer step, as written there (one micro-batch)."""
    batch = batching.to_device(batch, CUDA)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = strategy.forward(model, batch, training=True).loss
    loss.backward()
    skipped = ~torch.isfinite(torch.nn.utils.clip_grad_norm_(params, 1.0))
    optimizer.found_inf = skipped.float()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("family, packed", [("bert", True), ("bert", False), ("roberta", True), ("roberta", False),
                                            ("electra", False), ("albert", True), ("distilbert", True)])
def test_an_optimizer_step_makes_the_host_wait_for_nothing(family, packed):
    config = tiny_config(family, tiny_tokenizer(family))
    model = AutoModelForQuestionAnswering.from_config(config, attn_implementation="sdpa").to(CUDA)
    if packed:
        qa_model.enable_packing(model, attention_dropout=True)
    model.train()
    features = synthetic_features(24, config.vocab_size)
    strategy = batching.make_batching(batching.SpanHead(), config, features, 6, packed=packed, pack_tokens=0,
                                      max_seq_length=64, version_2=False, lang_id=0, attn_implementation="sdpa")
    batches = [batching.pinned(strategy.tensors(features, idx, with_labels=True), CUDA)
               for idx in strategy.plan(features.lengths(), seed=1)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    one_step(model, strategy, batches[0], optimizer, params)  # warm-up: allocations and kernels' first launches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:3]:
            one_step(model, strategy, batch, optimizer, params)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert all(np.isfinite(p.detach().float().cpu().numpy()).all() for p in params)
