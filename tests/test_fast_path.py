"""The fast path on the CPU: no host sync inside an optimizer step, batches built ahead, out-of-memory as one
line (and --auto_find_batch_size keeping the global batch), torch.compile equal to eager."""

import collections
import json
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

import run_squad
import utils_squad
from cli_helpers import common_flags, small_v2_file
from squad_internals import batching, device_path, fast_path, qa_model

# The loop's own files. (packing.py's CPU attention reads its segment bounds, which on a CPU are host memory;
# on a GPU the packed kernels take them as a tensor.)
PROJECT = {"run_squad.py", "batching.py", "train_log.py", "qa_model.py", "process_group.py", "checkpoints.py",
           "output_folder.py", "training_state.py"}


def flags(squad_dir: Path, tmp_path: Path, steps: int) -> list[str]:
    train = small_v2_file(squad_dir, tmp_path / "train.json", questions=120)
    return ["--do_train", "--train_file", str(train), "--max_steps", str(steps), "--save_steps", "0",
            "--logging_steps", "1000", "--overwrite_output_dir"]


class HostReads:
    """Counts, while training runs, the tensor methods that copy device data to the host, by caller file."""

    NAMES = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")

    def __init__(self, monkeypatch):
        self.by_file: collections.Counter = collections.Counter()
        self.on = False
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))
        real_train = run_squad.train

        def train(*args, **kwargs):
            self.on = True
            try:
                return real_train(*args, **kwargs)
            finally:
                self.on = False

        monkeypatch.setattr(run_squad, "train", train)

    def _counting(self, name, method):
        def counted(tensor, *args, **kwargs):
            if self.on and threading.current_thread() is threading.main_thread():
                self.by_file[Path(traceback.extract_stack(limit=2)[0].filename).name] += 1
            return method(tensor, *args, **kwargs)

        return counted

    def project(self) -> int:
        return sum(n for file, n in self.by_file.items() if file in PROJECT)


@pytest.mark.parametrize("steps", [4, 12])
def test_an_optimizer_step_reads_nothing_from_the_device(steps, tiny_bert_dir, squad_dir, tmp_path, monkeypatch):
    """The loop's only read is the end-of-training check of skipped updates: the same for 4 steps as for 12
    (the finiteness test, the skip, the loss and the stop signal all stay on the device between logs)."""
    reads = HostReads(monkeypatch)
    out = tmp_path / "out"
    assert run_squad.main([*common_flags(tiny_bert_dir, out), *flags(squad_dir, tmp_path, steps), "--packing"]) == 0
    assert reads.project() == 1, reads.by_file


def test_logging_steps_are_where_the_host_reads(tiny_bert_dir, squad_dir, tmp_path, monkeypatch):
    reads = HostReads(monkeypatch)
    command = [*common_flags(tiny_bert_dir, tmp_path / "out"), *flags(squad_dir, tmp_path, 12), "--packing",
               "--logging_steps", "4"]
    assert run_squad.main(command) == 0
    # Three logs (steps 4, 8, 12), each reading the skipped-update flags and the loss (at the end nothing is
    # left unread).
    assert reads.project() == 3 * 2, reads.by_file


class MemoryLimit(torch.nn.Module):
    """Wraps a model and raises CUDA's out-of-memory error for batches of more than `rows` features."""

    def __init__(self, module, rows: int):
        super().__init__()
        self.module = module  # `module`, like DDP, so checkpoints save the real model
        self.config = module.config
        self.rows = rows

    def forward(self, **inputs):
        if inputs["input_ids"].shape[0] > self.rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        return self.module(**inputs)


def memory_limit(monkeypatch, rows: int) -> None:
    original = qa_model.load_model
    monkeypatch.setattr(qa_model, "load_model", lambda *a, **k: MemoryLimit(original(*a, **k), rows))


def test_out_of_memory_is_one_line_with_the_flags_that_keep_the_global_batch(tiny_bert_dir, squad_dir, tmp_path,
                                                                            monkeypatch, capsys):
    memory_limit(monkeypatch, rows=4)
    command = [*common_flags(tiny_bert_dir, tmp_path / "out"), *flags(squad_dir, tmp_path, 3),
               "--gradient_accumulation_steps", "3"]
    assert run_squad.main(command) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "error: out of GPU memory at step 1 with --per_gpu_train_batch_size 8 and --max_seq_length 192: keep the "
        "same global batch with --per_gpu_train_batch_size 4 --gradient_accumulation_steps 6, or let "
        "--auto_find_batch_size find it")
    assert "Traceback" not in err


def test_auto_find_batch_size_halves_before_training_and_keeps_the_recipe(tiny_bert_dir, squad_dir, tmp_path,
                                                                         monkeypatch, capsys):
    """8 x 1 does not fit, nor 4 x 2; 2 x 4 does: the run then equals one started with 2 x 4 (same global
    batch, same data order, same random state: the probes leave no trace)."""
    memory_limit(monkeypatch, rows=2)
    found, direct = tmp_path / "found", tmp_path / "direct"
    common = flags(squad_dir, tmp_path, 6)
    assert run_squad.main([*common_flags(tiny_bert_dir, found), *common, "--auto_find_batch_size"]) == 0
    err = capsys.readouterr().err
    assert ("--auto_find_batch_size: 8 features per device do not fit in GPU memory; trying 4 with "
            "--gradient_accumulation_steps 2 (the same global batch)") in err
    assert "trying 2 with --gradient_accumulation_steps 4" in err
    assert "1 processes x 2 per device x 4 accumulation, 6 optimizer steps" in err
    saved = json.loads((found / "training_args.json").read_text())
    assert (saved["per_gpu_train_batch_size"], saved["gradient_accumulation_steps"]) == (2, 4)
    assert run_squad.main([*common_flags(tiny_bert_dir, direct), *common, "--per_gpu_train_batch_size", "2",
                           "--gradient_accumulation_steps", "4"]) == 0
    a, b = load_file(found / "model.safetensors"), load_file(direct / "model.safetensors")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_auto_find_batch_size_gives_up_at_one_feature(tiny_bert_dir, squad_dir, tmp_path, monkeypatch, capsys):
    memory_limit(monkeypatch, rows=0)
    command = [*common_flags(tiny_bert_dir, tmp_path / "out"), *flags(squad_dir, tmp_path, 3), "--auto_find_batch_size"]
    assert run_squad.main(command) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: out of GPU memory with one feature per device of up to --max_seq_length 192 tokens: shorten "
        "--max_seq_length or use a bigger GPU")


@pytest.mark.parametrize("size,smaller", [(8, 4), (12, 6), (9, 3), (7, 1), (2, 1), (1, 1)])
def test_a_smaller_batch_divides_the_batch(size, smaller):
    assert qa_model.smaller_batch(size) == smaller


def test_compiled_padded_forward_and_backward_equal_eager(tiny_bert_dir, squad_dir, tmp_path):
    """Under --torch_compile padded widths are rounded to 64 (a handful of shapes); on the same batch the
    compiled model gives the eager logits and gradients."""
    examples, _ = utils_squad.read_squad_examples(small_v2_file(squad_dir, tmp_path / "t.json", questions=20),
                                                  version_2_with_negative=True, is_training=True)
    features = utils_squad.convert_examples_to_features(
        examples, AutoTokenizer.from_pretrained(tiny_bert_dir), utils_squad.FeatureSettings(192, 64, 64, is_training=True))
    padded = batching.PaddedBatches(8, batching.SpanHead(), "bert", pad_to_multiple_of=64)
    batch = padded.tensors(features, np.arange(8), with_labels=True)
    assert batch["input_ids"].shape[1] % 64 == 0
    eager = AutoModelForQuestionAnswering.from_pretrained(tiny_bert_dir)
    compiled = AutoModelForQuestionAnswering.from_pretrained(tiny_bert_dir)
    compiled.compile()
    logits = []
    for model in (eager, compiled):
        model.eval()  # no dropout: the two must compute the same thing
        out = padded.forward(model, batch, training=True)
        out.loss.backward()
        logits.append(out.start_logits.detach())
    torch.testing.assert_close(logits[1], logits[0], atol=1e-5, rtol=1e-4)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def tiny_bert_without_dropout(tmp_path_factory, tiny_bert_dir) -> Path:
    """tiny_bert_dir with dropout off: compiled code draws its random numbers differently from eager."""
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    model = AutoModelForQuestionAnswering.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0,
                                                          attention_probs_dropout_prob=0.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_compiled_packed_training_and_evaluation_equal_eager(tiny_bert_without_dropout, squad_dir, tmp_path, capsys):
    """--packing --torch_compile (one shape: one compilation for training, one for evaluation) against the
    same run eager: the same weights and null odds within float tolerance."""
    dev = small_v2_file(squad_dir, tmp_path / "dev.json", questions=20)
    runs = {}
    # aot_eager traces and compiles the graphs as inductor does, without generating C++ (minutes on a cold
    # CPU cache); inductor itself is compared with eager in the test above.
    for name, extra in (("eager", []), ("compiled", ["--torch_compile", "--torch_compile_backend", "aot_eager"])):
        out = tmp_path / name
        command = [*common_flags(tiny_bert_without_dropout, out), *flags(squad_dir, tmp_path, 3), "--do_eval",
                   "--predict_file",
                   str(dev), "--packing", "--packed_attention_dropout", "off", *extra]
        assert run_squad.main(command) == 0
        runs[name] = out
    assert "torch.compile: the first optimizer step took" in capsys.readouterr().err
    # Adam turns float-level gradient differences on near-zero weights into differences of a fraction of one
    # step (lr 1e-3): a tenth of a step is the tolerance. The QA head's bias is left out: its exact gradient
    # is 0 (a constant added to all of a feature's logits leaves their softmax unchanged), so Adam's update of
    # it is rounding noise scaled up to a step, in either run; the null odds below do not depend on it.
    a, b = (load_file(runs[n] / "model.safetensors") for n in ("eager", "compiled"))
    for key in sorted(set(a) - {"qa_outputs.bias"}):
        np.testing.assert_allclose(b[key], a[key], atol=1e-4, rtol=1e-4, err_msg=key)
    odds = [json.loads((runs[n] / "null_odds_3.json").read_text()) for n in ("eager", "compiled")]
    assert odds[0].keys() == odds[1].keys()
    np.testing.assert_allclose([odds[1][k] for k in odds[0]], list(odds[0].values()), atol=1e-3)


class AllHostReads:
    """Counts the tensor methods that copy device data to the host, in every file (transformers' too)."""

    def __init__(self, monkeypatch):
        self.where: collections.Counter = collections.Counter()
        self.on = False
        for name in HostReads.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))

    def _counting(self, method):
        def counted(tensor, *args, **kwargs):
            if self.on:
                frame = traceback.extract_stack(limit=2)[0]
                self.where[f"{Path(frame.filename).name}:{frame.lineno}"] += 1
            return method(tensor, *args, **kwargs)
        return counted


def synthetic_features(n: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 60, size=n)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(starts[-1])
    types = np.concatenate([(np.arange(k) >= k // 4).astype(np.int8) for k in lengths])
    return utils_squad.SquadFeatures(
        input_ids=rng.integers(5, vocab, size=total).astype(np.int32), token_type_ids=types,
        p_mask=(1 - types).astype(np.int8), offsets=np.zeros((total, 2), dtype=np.int32), max_context=types.astype(bool),
        feature_start=starts, example_index=np.arange(n, dtype=np.int32), cls_index=np.zeros(n, dtype=np.int32),
        start_positions=(lengths // 2).astype(np.int32), end_positions=(lengths // 2 + 1).astype(np.int32),
        is_impossible=np.zeros(n, dtype=np.int8))


@pytest.mark.parametrize("family", sorted(batching.PREPARED_MASK_TYPES - {"xlm-roberta"}) + ["packed-bert"])
def test_a_training_forward_and_backward_read_nothing_from_the_device(family, monkeypatch):
    """Not the loop, not transformers: with the prepared masks, no `if tensor:` decides anything on the host
    (on a GPU each would wait for every kernel queued before it). On a CPU the packed attention's per-feature
    loop reads its segment bounds, which are host memory there (the GPU kernel takes them as a tensor)."""
    from tiny_models import tiny_config, tiny_tokenizer

    packed = family.startswith("packed-")
    config = tiny_config(family.removeprefix("packed-"), tiny_tokenizer(family.removeprefix("packed-")))
    model = AutoModelForQuestionAnswering.from_config(config)
    if packed:
        qa_model.enable_packing(model, attention_dropout=True)
    features = synthetic_features(12, config.vocab_size)
    strategy = batching.make_batching(batching.SpanHead(), config, features, 4, packed=packed, pack_tokens=0,
                                      max_seq_length=64, version_2=False, lang_id=0)
    reads = AllHostReads(monkeypatch)
    for idx in strategy.plan(features.lengths(), seed=1)[:2]:
        batch = strategy.tensors(features, idx, with_labels=True)
        reads.on = True
        strategy.forward(model, batch, training=True).loss.backward()
        reads.on = False
    assert {where for where in reads.where if not where.startswith("packing.py")} == set(), reads.where


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", sorted(batching.PREPARED_MASK_TYPES - {"xlm-roberta"}))
def test_the_prepared_padding_mask_gives_the_two_dimensional_masks_logits(family, attention):
    """SDPA reads the prepared boolean mask; eager attention would add it as numbers, so it keeps the 2-D mask."""
    from tiny_models import tiny_config, tiny_tokenizer

    config = tiny_config(family, tiny_tokenizer(family))
    model = AutoModelForQuestionAnswering.from_config(config, attn_implementation=attention).eval()
    features = synthetic_features(6, config.vocab_size)
    strategy = batching.make_batching(batching.SpanHead(), config, features, 6, packed=False, pack_tokens=0,
                                      max_seq_length=64, version_2=False, lang_id=0, attn_implementation=attention)
    batch = strategy.tensors(features, np.arange(6), with_labels=False)
    assert strategy.prepared_mask == (attention == "sdpa")
    if attention == "sdpa":
        assert batch["prepared_mask"].shape == (6, 1, 1, batch["input_ids"].shape[1])
    with torch.no_grad():
        prepared = strategy.forward(model, batch, training=False)
        classic = model(**{**strategy.inputs(batch, False), "attention_mask": batch["attention_mask"]})
    assert torch.equal(prepared.start_logits, classic.start_logits)
    assert torch.equal(prepared.end_logits, classic.end_logits)
    exact = batching.PaddedBatches(6, batching.SpanHead(), family, pad_to_multiple_of=1, prepared_mask=True)
    assert exact.tensors(features, np.arange(1), with_labels=False)["prepared_mask"] is None  # nothing padded


def test_the_run_says_its_path_and_evaluation_does_not_compile_again(tiny_bert_dir, squad_dir, tmp_path, monkeypatch,
                                                                      capsys):
    """--torch_compile compiles training; evaluation during training runs the same model eagerly instead of
    compiling it a second time (in evaluation mode), and the log says so."""
    import torch._dynamo.utils

    graphs_during_evaluation = []
    real_evaluate = run_squad.evaluate

    def evaluate(*args, **kwargs):
        before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            graphs_during_evaluation.append(torch._dynamo.utils.counters["stats"]["unique_graphs"] - before)

    monkeypatch.setattr(run_squad, "evaluate", evaluate)
    monkeypatch.setattr(run_squad.process_group, "cpu_bf16", lambda: "")  # a CPU without native bf16
    dev = small_v2_file(squad_dir, tmp_path / "dev.json", questions=10)
    command = [*common_flags(tiny_bert_dir, tmp_path / "out", None), *flags(squad_dir, tmp_path, 2), "--torch_compile",
               "--torch_compile_backend", "aot_eager", "--evaluate_during_training", "--eval_steps", "2",
               "--predict_file", str(dev)]
    assert run_squad.main(command) == 0
    assert graphs_during_evaluation == [0]
    paths = [line.split("run_squad: ", 1)[1] for line in capsys.readouterr().err.splitlines() if "run_squad: path: " in line]
    assert paths == ["path: padded batches (the CPU default; --packing to pack); fp32 (no precision flag, and the "
                     "CPU has no native bf16: neither amx_bf16 nor avx512_bf16); torch.compile for training "
                     "(--torch_compile); evaluation eager (not compiled a second time)"]


@pytest.mark.parametrize("reported, flag, precision", [
    ("avx512_bf16", [], "bf16"), ("amx_bf16", [], "bf16"), ("", [], "fp32"), ("avx512_bf16", ["--fp32"], "fp32")])
def test_a_cpu_run_takes_the_cpus_bf16_fact(tiny_bert_dir, monkeypatch, reported, flag, precision):
    monkeypatch.setattr(run_squad.process_group, "cpu_bf16", lambda: reported)
    args = run_squad.cli.parse_args(["--model_name_or_path", str(tiny_bert_dir), "--output_dir", "o", "--do_eval",
                                     "--predict_file", "p.json", *flag])
    config = qa_model.load_config(qa_model.ModelSource(str(tiny_bert_dir)))
    choice = device_path.choose_path(fast_path.PathFlags.from_args(args), torch.device("cpu"), config, False)
    assert choice.precision == precision
    assert (bool(reported) and reported in choice.reasons[1]) == (precision == "bf16")


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16 clzero\n\n"
     "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16 clzero\n", "avx512_bf16"),
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu avx512f amx_bf16 amx_tile avx512_bf16\n",
     "amx_bf16"),
    ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon (bf16 in the name)\n"
     "flags\t\t: fpu avx2 avx512f avx512_vnni\n", ""),  # the name never counts, only the flags
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", ""),
])
def test_the_cpus_bf16_fact_is_read_from_its_flags(tmp_path, cpuinfo, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert run_squad.process_group.cpu_bf16(str(path)) == expected


def test_without_proc_cpuinfo_torch_says(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert run_squad.process_group.cpu_bf16(str(tmp_path / "absent")) == "avx512_bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert run_squad.process_group.cpu_bf16(str(tmp_path / "absent")) == ""
