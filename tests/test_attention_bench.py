"""bench/attention_kernels.py: its CPU dry run (what a GPU run also executes, on tiny shapes) and the FA4 shim."""

import json
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import attention_kernels as ak  # noqa: E402


def test_dry_run_measures_the_cpu_variants_and_skips_the_cuda_ones(capsys):
    assert ak.main(["--dry-run", "--no_fa4", "--budget", "120"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {(r["variant"], r["dropout"]): r for r in result["rows"]}
    for key in (("segment_sdpa[cpu path]", 0.0), ("sdpa_math[grouped]", 0.0)):
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["fwdbwd_ms"] > 0 and row["finite"]
        assert row["out_err"] < 0.05 and row["grad_err"] < 0.05  # bf16 against the fp32 reference
    assert rows[("varlen_attn", 0.0)]["status"].startswith("skipped: needs CUDA")
    assert result["fa4"]["status"].startswith("skipped")


def test_padded_and_packed_layouts_hold_the_same_tokens():
    args = ak.parse_args(["--dry-run"])
    lengths = ak.load_lengths(args)
    wl = ak.Workload(lengths, 2, 8, args, ak.torch.device("cpu"), ak.torch.float32)
    packed, padded = wl.packed_calls(), wl.padded_calls()
    assert sorted(np.concatenate([c["feats"] for c in packed])) == sorted(np.concatenate([c["feats"] for c in padded]))
    for c in padded:
        assert c["width"] % 8 == 0 and c["width"] >= c["lens"].max()
        for i, f in enumerate(c["feats"]):
            a, n = wl.starts[f], wl.lengths[f]
            assert ak.torch.equal(c["q"][i, :n], wl.bank[0][a:a + n])
            assert not c["q"][i, n:].any()
    c = packed[0]
    assert int(c["cu"][-1]) == c["q"].shape[0] == int(wl.lengths[c["feats"]].sum())


def test_synthetic_lengths_look_like_squad_features():
    lengths = ak.synthetic_lengths(20000, seed=0)
    assert 190 < lengths.mean() < 205 and lengths.min() == 40 and lengths.max() == 384
    assert 0.05 < (lengths == 384).mean() < 0.09  # truncated long contexts, as in SQuAD


def test_the_fa4_shim_cuts_the_forward_to_out_and_lse():
    interface = types.SimpleNamespace(_flash_attn_fwd=lambda *a, **k: ("out", "lse", "p", "row_max", "o_lo"),
                                      _flash_attn_bwd=lambda *a, **k: ("dq", "dk", "dv"))
    shim = ak.fa4_shim_module(interface)
    assert shim._flash_attn_fwd(1, 2, 3, return_lse=True) == ("out", "lse")
    assert shim._flash_attn_bwd() == ("dq", "dk", "dv")
    assert sys.modules[shim.__name__] is shim
