"""fast_path.py: the path each family takes on each device, and the flags that take it back."""

import shlex

import pytest

from squad_internals import cli, fast_path

BASE = "--model_name_or_path m --output_dir o --do_train --train_file t "
PACKABLE = ["bert", "roberta", "xlm-roberta", "electra", "albert", "distilbert", "modernbert"]
PADDED_ONLY = ["xlnet", "xlm", "deberta-v2"]
H200 = {"cuda": True, "bf16_gpu": True, "flash_gpu": True}
V100 = {"cuda": True, "bf16_gpu": False, "flash_gpu": False}
CPU = {"cuda": False, "bf16_gpu": False}
BF16_CPU = {"cuda": False, "bf16_gpu": False, "bf16_cpu": "avx512_bf16"}


def choose(flags: str, model_type: str, relative: bool = False, **facts):
    return fast_path.choose(fast_path.PathFlags.from_args(cli.parse_args(shlex.split(BASE + flags))),
                            fast_path.Facts(model_type=model_type, relative_positions=relative, **facts))


@pytest.mark.parametrize("model_type", PACKABLE + PADDED_ONLY)
def test_on_a_cpu_the_classic_defaults_stay(model_type):
    choice = choose("", model_type, **CPU)
    assert (choice.packing, choice.precision, choice.sdpa_without_cudnn) == (False, "fp32", False)
    assert choice.describe() == ("path: padded batches (the CPU default; --packing to pack); fp32 (no precision flag, "
                                 "and the CPU has no native bf16: neither amx_bf16 nor avx512_bf16)")


@pytest.mark.parametrize("model_type", PACKABLE + PADDED_ONLY)
@pytest.mark.parametrize("feature", ["amx_bf16", "avx512_bf16"])
def test_on_a_cpu_with_native_bf16_the_default_is_bf16_autocast(model_type, feature):
    choice = choose("", model_type, cuda=False, bf16_gpu=False, bf16_cpu=feature)
    assert (choice.packing, choice.precision, choice.sdpa_without_cudnn) == (False, "bf16", False)
    assert choice.describe() == ("path: padded batches (the CPU default; --packing to pack); bf16 autocast (a CPU "
                                 f"with native bf16, {feature}, and no precision flag; --fp32 for fp32)")


@pytest.mark.parametrize("flags, facts, precision, reason", [
    ("--fp32", BF16_CPU, "fp32", "fp32 (--fp32)"),
    ("--bf16", CPU, "bf16", "bf16 autocast (--bf16)"),  # asked: emulated bf16 where the CPU has none
    ("--bf16", BF16_CPU, "bf16", "bf16 autocast (--bf16)"),
    ("--fp16", BF16_CPU, "fp16", "fp16 autocast with a gradient scaler (--fp16)"),
    # the CPU's bf16 says nothing about a GPU run (that GPU's own fact decides)
    ("", {**V100, "bf16_cpu": "amx_bf16"}, "fp32", "fp32 (no precision flag, and the GPU has no bf16)"),
])
def test_explicit_precision_flags_win_on_a_cpu(flags, facts, precision, reason):
    choice = choose(flags, "bert", **facts)
    assert (choice.precision, choice.reasons[1]) == (precision, reason)


@pytest.mark.parametrize("flags, expected", [
    (["fpu", "avx2", "avx512f", "avx512_bf16", "avx512_vnni"], "avx512_bf16"),  # AMD Zen 4, Intel Cooper Lake
    (["avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"], "amx_bf16"),            # Sapphire Rapids: AMX first
    (["avx512f", "avx512bw", "avx512_vnni"], ""),                                 # Ice Lake: AVX-512, no bf16
    (["fp", "asimd", "bf16", "i8mm"], ""),                                        # ARM: no rule measured yet
    ([], ""),
])
def test_native_bf16_is_what_the_cpu_reports(flags, expected):
    assert fast_path.native_bf16_cpu(flags) == expected


@pytest.mark.parametrize("requested, cuda, bf16_cpu, expected", [
    (None, False, "amx_bf16", "bfloat16"),
    (None, False, "", "float32"),
    (None, True, "amx_bf16", "float32"),  # a GPU: float32 unless asked, as transformers 4.x's pipeline
    ("float32", False, "avx512_bf16", "float32"),
    ("bfloat16", False, "", "bfloat16"),
    ("float16", True, "", "float16"),
])
def test_the_pipelines_precision(requested, cuda, bf16_cpu, expected):
    name, why = fast_path.pipeline_precision(requested, cuda, bf16_cpu)
    assert name == expected and why.startswith(expected)
    assert (bool(bf16_cpu) and bf16_cpu in why) == (requested is None and not cuda and bool(bf16_cpu))


@pytest.mark.parametrize("model_type", PACKABLE)
def test_on_a_bf16_gpu_the_seed_flags_get_packed_bf16(model_type):
    choice = choose("", model_type, **H200)
    assert (choice.packing, choice.precision) == (True, "bf16")
    assert choice.reasons[0] == (f"packed batches ({model_type}: flash attention's varlen kernel; --packing off for "
                                 "padded)")
    assert choice.reasons[1] == "bf16 autocast (a bf16 GPU and no precision flag; --fp32 for fp32)"


@pytest.mark.parametrize("model_type", PADDED_ONLY)
def test_families_that_cannot_pack_stay_padded_in_bf16(model_type):
    choice = choose("", model_type, **H200)
    assert (choice.packing, choice.precision, choice.sdpa_without_cudnn) == (False, "bf16", True)
    assert choice.reasons == (f"padded batches ({model_type}: its attention cannot be packed)",
                              "bf16 autocast (a bf16 GPU and no precision flag; --fp32 for fp32)")


def test_padded_bert_likes_take_sdpa_without_cudnn():
    choice = choose("--packing off", "roberta", **H200)
    assert choice.sdpa_without_cudnn
    assert choice.reasons[2] == ("padded attention: SDPA flash or memory-efficient kernels, not cuDNN "
                                 "(--sdpa_kernels torch for PyTorch's choice)")
    assert choose("--packing off --sdpa_kernels torch", "roberta", **H200).reasons[2] == (
        "padded attention: PyTorch's own SDPA choice (--sdpa_kernels torch)")


def test_remote_code_and_decoders_are_not_packed_unless_asked():
    assert not choose("", "bert", custom_code=True, **H200).packing
    assert choose("--packing", "bert", custom_code=True, **H200).packing


def test_the_relative_position_bert_stays_padded_on_a_gpu_unless_asked():
    assert not choose("", "bert", relative=True, **H200).packing
    assert choose("--packing", "bert", relative=True, **H200).packing  # its exact, quadratic packed path


def test_a_gpu_without_bf16_keeps_fp32_and_padded_batches():
    choice = choose("", "bert", **V100)
    assert (choice.packing, choice.precision) == (False, "fp32")
    assert choice.reasons[:2] == ("padded batches (flash attention's varlen kernel needs bf16/fp16 on sm80+: a GPU "
                                  "older than compute capability 8.0)", "fp32 (no precision flag, and the GPU has no bf16)")
    assert not choose("--fp16", "bert", **V100).packing  # fp16, but no flash kernel before sm80


def test_fp32_on_a_new_gpu_stays_padded():
    choice = choose("--fp32", "bert", **H200)
    assert not choice.packing
    assert choice.reasons[0] == "padded batches (flash attention's varlen kernel needs bf16/fp16 on sm80+: fp32)"


@pytest.mark.parametrize("flags, expected", [
    ("--packing off", (False, "bf16", True)),
    ("--packing", (True, "bf16", True)),
    ("--packing on --fp32", (True, "fp32", True)),
    ("--fp16", (True, "fp16", True)),
    ("--bf16 --packing off --sdpa_kernels torch", (False, "bf16", False)),
])
def test_explicit_flags_win(flags, expected):
    choice = choose(flags, "bert", **H200)
    assert (choice.packing, choice.precision, choice.sdpa_without_cudnn) == expected


def test_packing_on_a_cpu_when_asked():
    assert choose("--packing", "bert", **CPU).packing
    assert choose("--packing on", "bert", **CPU).reasons[0] == "packed batches (--packing)"


@pytest.mark.parametrize("flag, cuda, parameters, steps, training, evaluation", [
    ("auto", True, 335_000_000, 14_600, True, False),   # BERT-large, SQuAD: compiles
    ("auto", True, 110_000_000, 1_000, True, False),    # at the rule's edge
    ("auto", True, 110_000_000, 999, False, False),     # too short to repay it
    ("auto", True, 22_700_000, 50_000, False, False),   # MiniLM: host-bound, gains little
    ("auto", False, 335_000_000, 14_600, False, False),  # never on a CPU unless asked
    ("on", False, 22_700_000, 10, True, False),          # asked: training compiled, evaluation not again
    ("off", True, 335_000_000, 14_600, False, False),
])
def test_compilation_pays_for_long_gpu_training_only(flag, cuda, parameters, steps, training, evaluation):
    choice = fast_path.compilation(choose("", "bert", **H200), flag, cuda, True, parameters, steps)
    assert (choice.compile_training, choice.compile_evaluation) == (training, evaluation)


def test_an_evaluation_only_run_compiles_when_asked():
    base = choose("", "bert", **H200)
    asked = fast_path.compilation(base, "on", True, False, 335_000_000, 0)
    assert (asked.compile_training, asked.compile_evaluation) == (False, True)
    assert not fast_path.compilation(base, "auto", True, False, 335_000_000, 0).compile_evaluation


def test_the_log_line_names_each_choice_and_its_way_back():
    choice = fast_path.compilation(choose("", "bert", **H200), "auto", True, True, 335_000_000, 14_600)
    assert choice.describe() == (
        "path: packed batches (bert: flash attention's varlen kernel; --packing off for padded); bf16 autocast (a "
        "bf16 GPU and no precision flag; --fp32 for fp32); torch.compile for training (335M parameters x 14600 "
        "steps repay its compilation; --torch_compile off to skip)")


@pytest.mark.parametrize("flags, message", [
    ("--fp32 --bf16", "--fp32 and --bf16 are mutually exclusive"),
    ("--fp32 --fp16", "--fp32 and --fp16 are mutually exclusive"),
    ("--packing sometimes", "invalid choice: 'sometimes'"),
])
def test_precision_and_packing_flags_are_checked(flags, message):
    with pytest.raises(cli.UsageError, match=message):
        cli.parse_args(shlex.split(BASE + flags))


def test_the_old_spellings_still_mean_what_they_did():
    args = cli.parse_args(shlex.split(BASE + "--packing --torch_compile --bf16"))
    assert (args.packing, args.torch_compile, args.bf16) == ("on", "on", True)
    args = cli.parse_args(shlex.split(BASE))
    assert (args.packing, args.torch_compile, args.fp32, args.sdpa_kernels) == ("auto", "auto", False, "auto")
