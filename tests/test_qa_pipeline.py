"""qa_pipeline.py: transformers 4.x's question-answering pipeline on transformers 5.

Parity: tests/fixtures/qa_pipeline/expected.json holds 4.x's own outputs (bench/pipeline_parity.py, run under
transformers 4.57) for the small fine-tuned BERT in tests/fixtures/qa_pipeline/model, on real SQuAD 2.0 dev
questions, most of them over several windows. Families: tiny random models of every family the command line
fine-tunes (beam heads included), checked against a direct forward of the model on the tokenizer's own pair
encoding. Threshold: the no-answer decision flips exactly at the classic decoder's null odds. Command line:
JSON Lines in and out, and one line with exit code 2 for every kind of bad input.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, XLMForQuestionAnswering, XLNetForQuestionAnswering

import qa_pipeline
import utils_squad
from cli_helpers import without_torch
from qa_pipeline import PipelineInputError, QuestionAnsweringPipeline
from squad_internals import batching, decoding, fast_path, qa_model
from tiny_models import FAMILIES, tiny_config, tiny_model_dir, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "qa_pipeline"
MODEL = FIXTURE / "model"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
WINDOWED = EXPECTED["windowed"]
SCORE_TOLERANCE = 1e-4
CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region "
           "in France. Warsaw is the capital and largest city of Poland.")
QUESTION = "Who gave their name to Normandy?"


@pytest.fixture(scope="module")
def qa() -> QuestionAnsweringPipeline:
    return QuestionAnsweringPipeline(str(MODEL), device="cpu", dtype="float32", null_threshold=None)


def pairs_of(inputs: list[dict]) -> list[tuple[str, str]]:
    return [(x["question"], x["context"]) for x in inputs]


def assert_same_answer(ours: dict, theirs: dict, context: str) -> None:
    """The same answer and offsets, the score within SCORE_TOLERANCE, and an exact substring of the context."""
    assert isinstance(ours, dict) and set(ours) == set(qa_pipeline.ANSWER_KEYS), ours
    assert {k: ours[k] for k in ("start", "end", "answer")} == {k: theirs[k] for k in ("start", "end", "answer")}
    assert ours["score"] == pytest.approx(theirs["score"], abs=SCORE_TOLERANCE)
    assert ours["answer"] == context[ours["start"]:ours["end"]]


def assert_same_result(ours, theirs, context: str) -> None:
    """One input's result as 4.x shaped it: an answer (dict), or a list of answers."""
    if isinstance(theirs, dict):
        assert_same_answer(ours, theirs, context)
        return
    assert isinstance(ours, list) and len(ours) == len(theirs), (ours, theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert_same_answer(a, b, context)


def assert_same_output(ours, theirs, contexts: list[str]) -> None:
    """A call's output: one input's result, or (several inputs) a list of results."""
    if len(contexts) == 1:
        assert_same_result(ours, theirs, contexts[0])
        return
    assert isinstance(ours, list) and len(ours) == len(theirs) == len(contexts)
    for a, b, context in zip(ours, theirs, contexts, strict=True):
        assert_same_result(a, b, context)


# --------------------------------------------------------------------------------------------
# Parity with transformers 4.x
# --------------------------------------------------------------------------------------------


def test_fixture_covers_what_parity_needs():
    inputs = EXPECTED["inputs"]
    assert EXPECTED["transformers_version"].startswith("4.")
    assert sum(x["windows"] > 1 for x in inputs) >= 5 and max(x["windows"] for x in inputs) >= 3
    assert any(x["is_impossible"] for x in inputs) and not all(x["is_impossible"] for x in inputs)
    null_case = next(c for c in EXPECTED["cases"] if c["kwargs"] == {**WINDOWED, "top_k": 1,
                                                                        "handle_impossible_answer": True})
    empty = [out["answer"] == "" for out in null_case["outputs"]]
    assert any(empty) and not all(empty), "4.x's no-answer decision should go both ways on the fixture"
    sizes = sum(f.stat().st_size for f in MODEL.iterdir())
    assert sizes < 3_200_000


@pytest.mark.parametrize("case", EXPECTED["cases"], ids=lambda c: ",".join(f"{k}={v}" for k, v in c["kwargs"].items()))
def test_matches_transformers_4(qa, case):
    inputs = EXPECTED["inputs"]
    ours = qa(question=[x["question"] for x in inputs], context=[x["context"] for x in inputs], **case["kwargs"])
    assert_same_output(ours, case["outputs"], [x["context"] for x in inputs])


def test_windows_match_transformers_4(qa):
    settings = qa_pipeline.call_settings(WINDOWED, qa.tokenizer.model_max_length, 8)
    windows = qa_pipeline.build_windows(pairs_of(EXPECTED["inputs"]), qa.tokenizer, qa.backend, settings, False)
    counts = np.bincount(windows.features.example_index, minlength=len(EXPECTED["inputs"]))
    assert counts.tolist() == [x["windows"] for x in EXPECTED["inputs"]]


@pytest.mark.parametrize("call", EXPECTED["shapes"], ids=lambda c: c["call"])
def test_call_shapes_match_transformers_4(qa, call):
    args = [call["args"]] if "args" in call else []
    ours = qa(*args, **call["kwargs"])
    contexts = [x["context"] for x in call["args"]] if "args" in call else call["kwargs"]["context"]
    contexts = [contexts] if isinstance(contexts, str) else contexts
    if isinstance(call["kwargs"].get("question"), list) and isinstance(call["kwargs"]["context"], str):
        contexts = [call["kwargs"]["context"]] * len(call["kwargs"]["question"])
    assert_same_output(ours, call["output"], contexts)


def test_shapes_of_every_call_form(qa):
    one = qa(question=QUESTION, context=CONTEXT)
    assert isinstance(one, dict) and set(one) == {"score", "start", "end", "answer"}
    assert isinstance(one["score"], float) and isinstance(one["start"], int)
    as_dict = {"question": QUESTION, "context": CONTEXT}
    assert qa(QUESTION, CONTEXT) == qa(as_dict) == qa([as_dict]) == qa(X=[as_dict]) == qa(data=as_dict) == one
    several = qa(question=[QUESTION, "What is the capital of Poland?"], context=[CONTEXT, CONTEXT])
    assert isinstance(several, list) and len(several) == 2 and several[0] == one
    top = qa(question=QUESTION, context=CONTEXT, top_k=4)
    assert isinstance(top, list) and len(top) == 4 and top[0] == one
    assert [a["score"] for a in top] == sorted((a["score"] for a in top), reverse=True)
    with pytest.warns(UserWarning, match="topk"):
        assert qa(question=QUESTION, context=CONTEXT, topk=4) == top
    assert qa(question=[], context=[]) == []


def test_answers_are_exact_substrings_of_the_context(qa):
    inputs = EXPECTED["inputs"][::6]  # long and short contexts, answerable and not
    for kwargs in ({"top_k": 5}, {"top_k": 5, "align_to_words": False}, {"top_k": 3, "handle_impossible_answer": True},
                   {"top_k": 5, "max_seq_len": 48, "doc_stride": 16}):
        answers = qa.answer(pairs_of(inputs), **kwargs)
        for x, found in zip(inputs, answers, strict=True):
            assert found and all(a["answer"] == x["context"][a["start"]:a["end"]] for a in found)
            assert all(a["start"] < a["end"] for a in found if a["answer"])


def test_model_and_tokenizer_objects_answer_as_the_folder(qa):
    model = qa_model.load_model(str(MODEL), qa.model.config, qa_model.ModelSource(str(MODEL)), beam_head=False)
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    from_objects = QuestionAnsweringPipeline(model=model, tokenizer=tokenizer, dtype="float32", null_threshold=None)
    kwargs = {"top_k": 3, "handle_impossible_answer": True, **WINDOWED}
    assert from_objects(question=QUESTION, context=CONTEXT, **kwargs) == qa(question=QUESTION, context=CONTEXT, **kwargs)


# Precision: bf16 autocast by default on a CPU that computes bf16 natively (fast_path.pipeline_precision)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, bf16_cpu, weights, autocast", [
    (None, "avx512_bf16", torch.float32, torch.bfloat16),  # the default where the CPU has bf16
    (None, "amx_bf16", torch.float32, torch.bfloat16),
    (None, "", torch.float32, None),                       # a CPU without it stays float32
    ("float32", "amx_bf16", torch.float32, None),          # asked: the classic path back
    ("fp32", "avx512_bf16", torch.float32, None),
    (torch.float32, "avx512_bf16", torch.float32, None),
    ("bfloat16", "", torch.float32, torch.bfloat16),       # asked: autocast even where bf16 is emulated
    (torch.bfloat16, "", torch.float32, torch.bfloat16),
])
def test_the_cpu_precision_rule(dtype, bf16_cpu, weights, autocast):
    precision = qa_pipeline._precision_of(dtype, torch.device("cpu"), bf16_cpu)
    assert (precision.weights, precision.autocast) == (weights, autocast)
    assert ("bfloat16 autocast" in precision.reason) == (dtype is None and autocast is not None)


def test_on_a_gpu_the_default_stays_float32_and_half_dtypes_are_weights():
    cuda = torch.device("cuda")  # no GPU needed: the rule only reads the device's type
    assert qa_pipeline._precision_of(None, cuda, "amx_bf16") == qa_pipeline.Precision(
        torch.float32, None, "float32 (the default on a GPU; dtype='bfloat16' for bf16)")
    assert qa_pipeline._precision_of("bfloat16", cuda, "").weights == torch.bfloat16
    assert qa_pipeline._precision_of("float16", cuda, "") == qa_pipeline.Precision(
        torch.float16, None, "float16 (dtype='float16')")


@pytest.mark.parametrize("reported, autocast", [("avx512_bf16", torch.bfloat16), ("", None)])
def test_the_default_reads_the_cpu(monkeypatch, reported, autocast):
    monkeypatch.setattr(qa_pipeline.process_group, "cpu_bf16", lambda: reported)
    pipe = QuestionAnsweringPipeline(str(MODEL), device="cpu", null_threshold=None)
    assert pipe.precision.autocast == autocast and next(pipe.model.parameters()).dtype == torch.float32
    assert pipe.precision.reason == fast_path.pipeline_precision(None, False, reported)[1]


def test_bf16_autocast_answers_on_a_cpu(qa):
    """A real bf16 run on the CPU (native or emulated): the model's matmuls compute in bf16, the answers are
    exact substrings of their contexts, and mostly the float32 answers (the model is small and sure of few)."""
    bf16 = QuestionAnsweringPipeline(str(MODEL), device="cpu", dtype="bfloat16", null_threshold=None)
    seen = []
    bf16.model.qa_outputs.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    inputs = EXPECTED["inputs"][::4]
    found = bf16.answer(pairs_of(inputs), top_k=2, **WINDOWED)
    assert seen and set(seen) == {torch.bfloat16}
    assert next(bf16.model.parameters()).dtype == torch.float32  # float32 weights under autocast
    for x, answers in zip(inputs, found, strict=True):
        assert answers and all(a["answer"] == x["context"][a["start"]:a["end"]] and a["answer"] for a in answers)
        assert all(0.0 < a["score"] <= 1.0 for a in answers)
    same = sum(ours[0]["answer"] == theirs[0]["answer"]
               for ours, theirs in zip(found, qa.answer(pairs_of(inputs), top_k=2, **WINDOWED), strict=True))
    assert same >= 0.8 * len(inputs), (same, len(inputs))


def quantized_by_hand(model):
    """An independent int8 quantization of the same model: torch.ao's quantize_dynamic called directly on a copy,
    per output channel, every Linear layer of the encoder (BERT's "bert." modules), none of the head."""
    import copy

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    layers = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.startswith("bert.")}
    assert len(layers) == 6 * model.config.num_hidden_layers  # q, k, v, attention output, FFN in and out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return quantize_dynamic(copy.deepcopy(model), layers, dtype=torch.qint8)


def test_int8_quantizes_the_encoder_per_channel_and_answers_as_torch_ao_does(qa):
    """quantize='int8': on the CPU (the default device then), the encoder's Linear layers become dynamic int8
    with one scale per output channel, the answer head stays float32, the caller's model object is left as it
    is, and the answers (scores included) are those of the same model quantized by hand; most are float32's."""
    int8 = QuestionAnsweringPipeline(str(MODEL), quantize="int8", null_threshold=None)
    assert int8.device == torch.device("cpu") and int8.precision.reason == qa_pipeline.INT8_REASON
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert type(int8.model.qa_outputs) is torch.nn.Linear
    assert type(int8.model.bert.encoder.layer[0].attention.self.query) is dynamic
    assert int8.model.bert.encoder.layer[0].output.dense.weight().qscheme() == torch.per_channel_affine
    hand = QuestionAnsweringPipeline(model=quantized_by_hand(qa.model), tokenizer=str(MODEL), null_threshold=None)
    inputs = EXPECTED["inputs"][::4]
    found = int8.answer(pairs_of(inputs), top_k=2, **WINDOWED)
    assert found == hand.answer(pairs_of(inputs), top_k=2, **WINDOWED)
    from_object = QuestionAnsweringPipeline(model=qa.model, tokenizer=str(MODEL), quantize="int8", null_threshold=None)
    assert type(qa.model.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear  # the caller's, untouched
    assert from_object.answer(pairs_of(inputs), top_k=2, **WINDOWED) == found
    same = sum(a[0]["answer"] == b[0]["answer"]
               for a, b in zip(found, qa.answer(pairs_of(inputs), top_k=2, **WINDOWED), strict=True))
    assert same >= 0.8 * len(inputs), (same, len(inputs))


def test_int8_leaves_a_model_object_as_it_is_and_its_quantized_layers_compute_float32(qa, monkeypatch):
    """quantize='int8' on a bf16 model object quantizes a float32 copy (the caller's keeps its dtype and layers);
    a model object already quantized computes float32 even where the CPU's default is bf16 autocast, and is
    refused with a half dtype or a GPU, in one line each."""
    monkeypatch.setattr(qa_pipeline.process_group, "cpu_bf16", lambda: "avx512_bf16")  # bf16's default, injected
    import copy

    half = copy.deepcopy(qa.model).to(torch.bfloat16)
    int8 = QuestionAnsweringPipeline(model=half, tokenizer=str(MODEL), quantize="int8", null_threshold=None)
    assert next(half.parameters()).dtype == torch.bfloat16
    assert type(half.bert.encoder.layer[0].attention.self.query) is torch.nn.Linear
    assert type(int8.model.bert.encoder.layer[0].attention.self.query) is torch.ao.nn.quantized.dynamic.Linear
    assert int8.model.qa_outputs.weight.dtype == torch.float32 and int8.precision.autocast is None
    quantized = quantized_by_hand(qa.model)
    mine = QuestionAnsweringPipeline(model=quantized, tokenizer=str(MODEL), null_threshold=None)
    assert (mine.precision.weights, mine.precision.autocast) == (torch.float32, None)
    assert mine.answer([(QUESTION, CONTEXT)])[0][0]["answer"]
    with pytest.raises(PipelineInputError, match="a model with quantized layers computes float32 around its int8 "
                                                 "layers: dtype 'bfloat16' cannot be combined with it"):
        QuestionAnsweringPipeline(model=quantized, tokenizer=str(MODEL), dtype="bfloat16")
    with pytest.raises(PipelineInputError, match="the model object is quantized already"):
        QuestionAnsweringPipeline(model=quantized, tokenizer=str(MODEL), quantize="int8")
    for falsy in (False, "", 0):  # not None, not "int8": refused, never taken for int8
        with pytest.raises(PipelineInputError, match="quantize must be None or 'int8'"):
            QuestionAnsweringPipeline(model=qa.model, tokenizer=str(MODEL), quantize=falsy)
    on_a_gpu = object.__new__(QuestionAnsweringPipeline)
    on_a_gpu.device = torch.device("cuda")  # no GPU needed: the rule reads the device's type
    with pytest.raises(PipelineInputError, match="a model with quantized layers runs on a CPU"):
        on_a_gpu._object_model(quantized, None, None)


def test_int8_refusals_are_one_line():
    with pytest.raises(PipelineInputError, match="quantize must be None or 'int8', got 'int4'"):
        QuestionAnsweringPipeline(str(MODEL), quantize="int4")
    with pytest.raises(PipelineInputError, match="dtype 'bfloat16' cannot be combined with it"):
        QuestionAnsweringPipeline(str(MODEL), quantize="int8", dtype="bfloat16")
    with pytest.raises(PipelineInputError, match="runs on a CPU"):  # no GPU needed: the rule reads the device
        qa_pipeline._check_quantize("int8", torch.device("cuda"), None)
    qa_pipeline._check_quantize("int8", torch.device("cpu"), "fp32")  # float32 asked: the same path
    no_encoder = torch.nn.Sequential(torch.nn.Linear(4, 2))
    no_encoder.base_model_prefix = "bert"
    with pytest.raises(PipelineInputError, match=r"Sequential has no Linear layer under its encoder \(bert\)"):
        qa_pipeline.quantized_int8(no_encoder)


def test_bad_calls_are_value_errors(qa):
    with pytest.raises(ValueError, match="cannot be empty"):
        qa(question="", context=CONTEXT)
    with pytest.raises(ValueError, match="same lengths"):
        qa(question=[QUESTION, QUESTION], context=[CONTEXT])
    with pytest.raises(KeyError):
        qa([{"question": QUESTION}])
    with pytest.raises(ValueError, match="top_k"):
        qa(question=QUESTION, context=CONTEXT, top_k=0)
    with pytest.raises(ValueError, match="larger than `max_seq_len`"):
        qa(question=QUESTION, context=CONTEXT, max_seq_len=32, doc_stride=40)
    with pytest.raises(TypeError, match="max_answer_length"):
        qa(question=QUESTION, context=CONTEXT, max_answer_length=3)
    # An overlap as large as the window is refused only when the context needs a second window, as 4.x.
    with pytest.raises(PipelineInputError, match="doc_stride 25 must be less than the 20 context tokens"):
        qa(question="Who?", context=CONTEXT, max_seq_len=25, doc_stride=25)
    assert qa(question="Who?", context="The Normans.", max_seq_len=25, doc_stride=25)["answer"]
    with pytest.raises(ValueError, match="dtype float16 needs a CUDA device"):
        QuestionAnsweringPipeline(str(MODEL), device="cpu", dtype="float16")
    with pytest.raises(PipelineInputError, match="no such model folder"):
        QuestionAnsweringPipeline(str(MODEL / "absent"))


def test_long_questions_are_cut_to_max_question_len(qa):
    question = " ".join(["which"] * 80) + " name?"
    windows = qa_pipeline.build_windows([(question, CONTEXT)], qa.tokenizer, qa.backend,
                                        qa_pipeline.call_settings({"max_seq_len": 96, "doc_stride": 8}, 512, 8), False)
    question_tokens = int((windows.features.token_type_ids[windows.features.token_slice(0)] == 0).sum()) - 2
    assert question_tokens == 64
    # Cut to 40 - 3 specials - 1 tokens: windows of one context token, one token apart.
    assert qa(question=question, context=CONTEXT, max_seq_len=40, doc_stride=0)["answer"]


# --------------------------------------------------------------------------------------------
# Every family, beam heads included
# --------------------------------------------------------------------------------------------

BEAM_CLASSES = {"xlnet": XLNetForQuestionAnswering, "xlm": XLMForQuestionAnswering}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    dirs = {family: tiny_model_dir(family, tmp_path_factory) for family in FAMILIES}
    for family, cls in BEAM_CLASSES.items():
        tokenizer = tiny_tokenizer(family)
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(f"tiny-{family}-beam")
        cls(tiny_config(family, tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        dirs[f"{family}-beam"] = folder
    return dirs


def direct_logits(model, tokenizer, question: str, context: str, model_type: str):
    """The model's outputs on the tokenizer's own pair encoding (context first when it pads on the left)."""
    context_first = tokenizer.padding_side == "left"
    pair = (context, question) if context_first else (question, context)
    enc = tokenizer(*pair, return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if model_type not in batching.NO_TOKEN_TYPES:  # the classic script's rule (ALBERT's tokenizer omits them)
        inputs["token_type_ids"] = enc["token_type_ids"]
    sequence = enc.sequence_ids(0)
    is_context = np.array([s == (0 if context_first else 1) for s in sequence])
    cls = enc["input_ids"][0].tolist().index(tokenizer.cls_token_id)
    return inputs, is_context, cls, enc["offset_mapping"][0].numpy()


def brute_force_spans(start: np.ndarray, end: np.ndarray, is_context: np.ndarray, cls: int, max_len: int):
    """(score, start token, end token) of every span, best first, by softmax probabilities over context + CLS."""
    allowed = is_context.copy()
    allowed[cls] = True
    p_start = np.exp(start[allowed] - start[allowed].max())
    p_end = np.exp(end[allowed] - end[allowed].max())
    prob_s = np.zeros(len(start))
    prob_e = np.zeros(len(start))
    prob_s[allowed], prob_e[allowed] = p_start / p_start.sum(), p_end / p_end.sum()
    spans = [(prob_s[s] * prob_e[e], s, e) for s in np.flatnonzero(is_context) for e in np.flatnonzero(is_context)
             if s <= e < s + max_len]
    return sorted(spans, reverse=True)


def brute_force_beam_spans(out, is_context: np.ndarray, max_len: int):
    starts, ends = out.start_top_index[0].tolist(), out.end_top_index[0].tolist()
    start_lp, end_lp = out.start_top_log_probs[0].tolist(), out.end_top_log_probs[0].tolist()
    per_start = len(ends) // len(starts)
    spans = [(math.exp(start_lp[i] + end_lp[i * per_start + j]), starts[i], ends[i * per_start + j])
             for i in range(len(starts)) for j in range(per_start)]
    return sorted((s for s in spans if is_context[s[1]] and is_context[s[2]] and s[1] <= s[2] < s[1] + max_len),
                  reverse=True)


@pytest.mark.parametrize("family", [*FAMILIES, *(f"{f}-beam" for f in BEAM_CLASSES)])
def test_every_family_answers_as_a_direct_forward(family_dirs, family):
    pipe = QuestionAnsweringPipeline(str(family_dirs[family]), device="cpu", dtype="float32")
    assert pipe.beam == family.endswith("-beam")
    best = pipe(question=QUESTION, context=CONTEXT, align_to_words=False)
    inputs, is_context, cls, offsets = direct_logits(pipe.model, pipe.tokenizer, QUESTION, CONTEXT, pipe.model_type)
    with torch.inference_mode():
        if pipe.beam:
            p_mask = torch.tensor([[0.0 if c or i == cls else 1.0 for i, c in enumerate(is_context)]])
            out = pipe.model(**inputs, p_mask=p_mask, cls_index=torch.tensor([cls]))
            spans = brute_force_beam_spans(out, is_context, 15)
        else:
            out = pipe.model(**inputs)
            spans = brute_force_spans(out.start_logits[0].double().numpy(), out.end_logits[0].double().numpy(),
                                      is_context, cls, 15)
    assert best["score"] == pytest.approx(spans[0][0], rel=1e-4)
    # The best span's characters (trimmed of whitespace, as the pipeline's offsets), unless a near-tie decided.
    chars = utils_squad.trim_offsets_whitespace(CONTEXT, offsets.astype(np.int32))
    near = [(int(chars[s][0]), int(chars[e][1])) for score, s, e in spans if score >= spans[0][0] * (1 - 1e-5)]
    assert (best["start"], best["end"]) in near
    # Several windows, words, the null answer: still exact substrings. (Scores may exceed 1: the same text
    # found in several windows adds up, as in 4.x.)
    for kwargs in ({"top_k": 5, "handle_impossible_answer": True, "max_seq_len": 40, "doc_stride": 8},
                   {"top_k": 3}):
        answers = pipe.answer([(QUESTION, CONTEXT), ("What is the capital of Poland?", CONTEXT)], **kwargs)
        for found in answers:
            assert found and all(a["answer"] == CONTEXT[a["start"]:a["end"]] for a in found)
            assert all(a["score"] > 0 for a in found)


# --------------------------------------------------------------------------------------------
# The tuned no-answer threshold
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory) -> Path:
    return Path(shutil.copytree(MODEL, tmp_path_factory.mktemp("qa-threshold") / "model"))


def classic_null_odds(qa, pairs) -> tuple[list[float], list[dict]]:
    """squad_metrics' null odds of the inputs on the pipeline's windows (its logits), n-best 20, length 30; and
    each input's "" answer with 4.x's null score."""
    settings = qa_pipeline.call_settings(WINDOWED, qa.tokenizer.model_max_length, 8)
    windows = qa_pipeline.build_windows(pairs, qa.tokenizer, qa.backend, settings, False)
    arrays = qa._forward(windows.features, qa.batch_size)  # the pipeline's batches: the same logits, to the bit
    start = np.zeros(len(windows.features.input_ids), dtype=np.float32)
    end = np.zeros_like(start)
    start[arrays["token"]], end[arrays["token"]] = arrays["start_logits"], arrays["end_logits"]
    _, _, odds = decoding.compute_predictions_logits(windows.examples, windows.features, start, end, 20, 30,
                                                          version_2_with_negative=True)
    ranking = qa_pipeline.Ranking(windows)  # every window's outputs at once, as one chunk
    qa._rank_part(ranking, windows, 0, windows.features, arrays, settings)
    _, nulls = ranking.result()
    return [odds[ex.qas_id] for ex in windows.examples], [qa_pipeline.null_answer(score) for score in nulls]


def write_threshold(folder: Path, value: float) -> None:
    (folder / qa_pipeline.THRESHOLD_FILE).write_text(json.dumps({"null_score_diff_threshold": value, "best_f1": 50.0}))


def test_the_threshold_decides_exactly_at_the_null_odds(qa, model_copy):
    pairs = pairs_of(EXPECTED["inputs"][::2])
    odds, nulls = classic_null_odds(qa, pairs)
    spans = qa.answer(pairs, top_k=3, **WINDOWED)
    assert nulls[0] in qa.answer(pairs[:1], top_k=100, handle_impossible_answer=True, **WINDOWED)[0]
    middle = int(np.argsort(odds)[len(odds) // 2])
    assert odds[middle] < decoding.NO_SPAN_NULL_ODDS
    for value in (odds[middle], float(np.nextafter(odds[middle], -np.inf))):
        write_threshold(model_copy, value)
        tuned = QuestionAnsweringPipeline(str(model_copy), device="cpu", dtype="float32")
        assert tuned.threshold.value == value
        found = tuned.answer(pairs, top_k=3, handle_impossible_answer=True, **WINDOWED)
        for i, answers in enumerate(found):
            assert answers == ([nulls[i], *spans[i][:2]] if odds[i] > value else spans[i])
        decisions = [a[0]["answer"] == "" for a in found]
        assert decisions[middle] == (value < odds[middle]) and 0 < sum(decisions) < len(decisions)
    # Without handle_impossible_answer the threshold is not used: 4.x's spans.
    assert tuned.answer(pairs[:4], top_k=3, **WINDOWED) == spans[:4]


def test_null_threshold_none_ignores_the_file_and_a_number_is_used(qa, model_copy):
    write_threshold(model_copy, -1e9)
    inputs = EXPECTED["inputs"]
    kwargs = {**WINDOWED, "top_k": 1, "handle_impossible_answer": True}
    case = next(c for c in EXPECTED["cases"] if c["kwargs"] == kwargs)
    ignoring = QuestionAnsweringPipeline(str(model_copy), device="cpu", dtype="float32", null_threshold=None)
    assert ignoring.threshold is None
    assert_same_output(ignoring(question=[x["question"] for x in inputs], context=[x["context"] for x in inputs],
                                **kwargs), case["outputs"], [x["context"] for x in inputs])
    some = pairs_of(inputs[::4])
    everything_null = QuestionAnsweringPipeline(str(model_copy), device="cpu", dtype="float32")
    assert all(a[0]["answer"] == "" for a in everything_null.answer(some, **kwargs))
    never_null = QuestionAnsweringPipeline(str(model_copy), device="cpu", dtype="float32", null_threshold=1e9)
    assert not any(a[0]["answer"] == "" for a in never_null.answer(some, **kwargs))


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1.5]", "expected a JSON object, got array"),
    ('{"best_f1": 3}', "missing key 'null_score_diff_threshold'"),
    ('{"null_score_diff_threshold": "high"}', "'null_score_diff_threshold' must be a finite number, got \"high\""),
])
def test_a_bad_threshold_file_is_one_line_naming_it(tmp_path, content, message):
    (tmp_path / qa_pipeline.THRESHOLD_FILE).write_text(content)
    with pytest.raises(PipelineInputError) as err:
        qa_pipeline.resolve_threshold("auto", tmp_path)
    assert str(err.value).startswith(f"{tmp_path / qa_pipeline.THRESHOLD_FILE}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_beam_head_threshold_is_on_the_smallest_cls_logit(family_dirs, tmp_path):
    folder = Path(shutil.copytree(family_dirs["xlnet-beam"], tmp_path / "xlnet"))
    pipe = QuestionAnsweringPipeline(str(folder), device="cpu", dtype="float32", null_threshold=None)
    pairs = [(QUESTION, CONTEXT), ("What is the capital of Poland?", CONTEXT)]
    settings = qa_pipeline.call_settings({"max_seq_len": 40, "doc_stride": 8}, 512, 8)
    windows = qa_pipeline.build_windows(pairs, pipe.tokenizer, pipe.backend, settings, True)
    arrays = pipe._forward(windows.features, pipe.batch_size)
    smallest = [float(arrays["cls_logits"][windows.features.example_index[arrays["feature"]] == i].min())
                for i in range(2)]
    for value, expect_null in ((smallest[0], False), (float(np.nextafter(smallest[0], -np.inf)), True)):
        write_threshold(folder, value)
        found = QuestionAnsweringPipeline(str(folder), device="cpu", dtype="float32").answer(
            pairs[:1], handle_impossible_answer=True, max_seq_len=40, doc_stride=8)
        assert (found[0][0]["answer"] == "") == expect_null


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "qa_pipeline.py", *args], cwd=REPO, input=stdin, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})


def records(n: int) -> list[dict]:
    return [{"id": f"q{i}", "question": x["question"], "context": x["context"], "source": "dev"}
            for i, x in enumerate(EXPECTED["inputs"][:n])]


def test_cli_answers_a_file_in_order_with_ids(qa, tmp_path):
    given = records(5)
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in given) + "\n\n")
    done = run_cli(str(MODEL), "--input", str(path), "--handle_impossible_answer", "--max_seq_len", "128",
                   "--doc_stride", "32", "--no_threshold", "--dtype", "float32")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    expected = qa.answer(pairs_of(given), handle_impossible_answer=True, **WINDOWED)
    assert [line["id"] for line in lines] == [r["id"] for r in given]
    for line, record, answers in zip(lines, given, expected, strict=True):
        assert set(line) == {"id", "question", "context", "source", "score", "start", "end", "answer"}
        assert {k: line[k] for k in record} == record
        assert line["answer"] == record["context"][line["start"]:line["end"]]
        assert {k: line[k] for k in ("start", "end", "answer")} == {k: answers[0][k] for k in ("start", "end", "answer")}
        assert line["score"] == pytest.approx(answers[0]["score"], abs=1e-6)


def test_cli_reads_standard_input_and_lists_top_k(qa):
    given = [{**r, "answers": ["gold"]} for r in records(3)]
    done = run_cli(str(MODEL), "--top_k", "3", "--dtype", "float32",
                   stdin="".join(json.dumps(r) + "\n" for r in given))
    assert done.returncode == 0, done.stderr
    assert done.stderr.endswith("qa_pipeline.py: warning: input key(s) answers replaced by the answer in the output\n")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["q0", "q1", "q2"]
    for line, answers in zip(lines, qa.answer(pairs_of(given), top_k=3), strict=True):
        assert [a["answer"] for a in line["answers"]] == [a["answer"] for a in answers] and len(answers) == 3


GOOD = json.dumps({"question": "Who?", "context": "The Normans."})


@pytest.mark.parametrize("content, message", [
    (GOOD + "\n{oops\n", "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    (GOOD + "\n\n[1, 2]\n", "line 3: expected a JSON object, got array"),
    ('{"context": "The Normans."}\n', "line 1: missing key 'question'"),
    (GOOD + '\n{"question": "Who?", "context": 7}\n', "line 2: 'context' must be a string, got number"),
    ('{"question": " ", "context": "The Normans."}\n', "line 1: 'question' is empty"),
    ("\n\n", "empty file (expected JSON Lines: one {\"question\", \"context\"} object per line)"),
])
def test_cli_malformed_input_is_one_line_and_exit_2(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    done = run_cli(str(MODEL), "--input", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"error: {path}: {message}\n")
    from_stdin = run_cli(str(MODEL), stdin=content)
    assert (from_stdin.returncode, from_stdin.stdout, from_stdin.stderr) == (2, "", f"error: <stdin>: {message}\n")


def test_cli_missing_model_folder_input_file_and_bad_flag(tmp_path):
    absent = tmp_path / "no-model"
    done = run_cli(str(absent), stdin=GOOD + "\n")
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"error: {absent}: no such model folder\n")
    done = run_cli(str(MODEL), "--input", str(tmp_path / "absent.jsonl"))
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"error: {tmp_path / 'absent.jsonl'}: cannot read file: No such file or directory\n")
    done = run_cli(str(MODEL), "--top_k", "0", stdin=GOOD)
    assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: ") and "--top_k" in done.stderr and "Traceback" not in done.stderr


def test_cli_quantize_int8_answers_and_refuses_what_it_cannot_combine(qa):
    given = records(3)
    done = run_cli(str(MODEL), "--quantize", "int8", stdin="".join(json.dumps(r) + "\n" for r in given))
    assert done.returncode == 0 and done.stderr == "", done.stderr  # torch.ao's deprecation notices silenced
    hand = QuestionAnsweringPipeline(model=quantized_by_hand(qa.model), tokenizer=str(MODEL), null_threshold="auto")
    for line, answers in zip((json.loads(x) for x in done.stdout.splitlines()), hand.answer(pairs_of(given)),
                             strict=True):
        assert {k: line[k] for k in ("start", "end", "answer")} == {k: answers[0][k] for k in ("start", "end", "answer")}
        assert line["score"] == pytest.approx(answers[0]["score"], abs=1e-6)
    for flags, message in ((["--dtype", "bfloat16"], "computes float32 around its int8 layers: drop --dtype bfloat16"),
                           (["--device", "cuda"], "runs on a CPU: use --device cpu (got --device cuda)")):
        done = run_cli(str(MODEL), "--quantize", "int8", *flags, stdin=GOOD)
        assert done.returncode == 2 and done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
        assert message in done.stderr


def test_the_command_sets_the_cpu_threads_by_the_rule(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(qa_pipeline.process_group, "use_cpu_threads", lambda: calls.append("set") or "")
    path = tmp_path / "in.jsonl"
    path.write_text(GOOD + "\n")
    assert qa_pipeline.main([str(MODEL), "--input", str(path), "--dtype", "float32"]) == 0
    assert calls == ["set"] and json.loads(capsys.readouterr().out)["answer"]


def test_help_and_bad_input_do_not_import_torch(tmp_path):
    env = without_torch(tmp_path / "shadow")
    done = subprocess.run([sys.executable, "qa_pipeline.py", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0 and "--handle_impossible_answer" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "qa_pipeline.py", str(MODEL)], cwd=REPO, input="[1]\n",
                          capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stderr) == (2, "error: <stdin>: line 1: expected a JSON object, got array\n")


def test_output_line_keeps_extra_keys_and_shapes_answers():
    record = {"id": "x", "question": "q", "context": "c", "meta": [1]}
    answer = {"score": 0.5, "start": 0, "end": 1, "answer": "c"}
    assert json.loads(qa_pipeline.output_line(record, [answer], 1)) == {**record, **answer}
    assert json.loads(qa_pipeline.output_line(record, [answer], 2)) == {**record, "answers": [answer]}
    assert json.loads(qa_pipeline.output_line(record, [], 1)) == {**record, "score": 0.0, "start": 0, "end": 0,
                                                                  "answer": ""}
    assert list(json.loads(qa_pipeline.output_line(record, [answer], 1))) == [*record, *answer]  # input keys first


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_long_context_goes_through_the_model_a_chunk_at_a_time_with_the_same_answers(qa, monkeypatch):
    """Windows are run and ranked CHUNK_BATCHES batches at a time, so a call holds one chunk's outputs, not every
    window's; the answers (and the tuned threshold's decisions) are those of one chunk holding every window."""
    context = " ".join([CONTEXT] * 12)
    pairs = [(QUESTION, context), ("What is the capital of Poland?", context)]
    keywords = {"max_seq_len": 48, "doc_stride": 16, "top_k": 3, "handle_impossible_answer": True}
    whole = qa.answer(pairs, batch_size=4096, **keywords)
    sizes = []
    real_forward = QuestionAnsweringPipeline._forward

    def forward(self, features, batch_size):
        sizes.append(len(features))
        return real_forward(self, features, batch_size)

    monkeypatch.setattr(QuestionAnsweringPipeline, "_forward", forward)
    chunked = qa.answer(pairs, batch_size=2, **keywords)
    assert sizes == [16, 16, 4], sizes  # 36 windows (2 questions x 18), 8 batches of 2 at a time
    for ours, theirs in zip(chunked, whole, strict=True):
        assert [a["answer"] for a in ours] == [a["answer"] for a in theirs]
        assert [a["score"] for a in ours] == pytest.approx([a["score"] for a in theirs], abs=1e-6)
    thresholded = QuestionAnsweringPipeline(str(MODEL), device="cpu", dtype="float32", null_threshold=0.0)
    assert thresholded.answer(pairs, batch_size=2, **keywords) == thresholded.answer(pairs, batch_size=4096, **keywords)


def test_progress_is_shown_on_a_terminal_only(qa, monkeypatch):
    context = " ".join([CONTEXT] * 12)
    for stream, shown in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        qa.answer([(QUESTION, context)], batch_size=1, max_seq_len=48, doc_stride=16)
        assert ("qa_pipeline: windows" in stream.getvalue()) == shown


def test_on_a_gpu_the_pipeline_attends_without_cudnn_for_the_call_only():
    """Windows of every width would make cuDNN build a graph per batch shape; the choice is scoped to the call."""
    cudnn_before = torch.backends.cuda.cudnn_sdp_enabled()
    with qa_pipeline.padded_attention_kernels(torch.device("cuda")):  # entering needs no GPU: it sets flags
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == cudnn_before
    with qa_pipeline.padded_attention_kernels(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == cudnn_before
