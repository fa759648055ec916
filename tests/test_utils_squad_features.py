"""Featurization for every tokenizer family: windows, labels, offsets, p_mask, max-context, lower-casing."""

import copy
import dataclasses
import re
import string

import numpy as np
import pytest

import utils_squad as us
from squad_internals import batching
from tiny_models import FAMILIES, tiny_tokenizer
from utils_squad import FeatureSettings, SquadExample

NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
           "fifteen sixteen")
NORMANS = "The Normans gave their name to Normandy, a region in France"
UNICODE = "Zürich  and   Genève are cities;  a naïve café  owner sold crème brûlée in Москва 東京 today"


def example(qid, context, answer=None, question="Who gave their name?", occurrence=0):
    if answer is None:
        return SquadExample(qid, question, context, [], True)
    start = [m.start() for m in re.finditer(re.escape(answer), context)][occurrence]
    return SquadExample(qid, question, context, [{"text": answer, "answer_start": start}], False)


def hand_built_examples():
    words = NUMBERS.split()
    return [
        example("start", NORMANS, "The"),
        example("end", NORMANS, "France"),
        example("multi", NORMANS, "Normandy, a region"),
        example("impossible", NORMANS),
        example("unicode-1", UNICODE, "Genève"),
        example("unicode-2", UNICODE, "café  owner"),
        example("unicode-3", UNICODE, "Москва"),
        example("unicode-4", UNICODE, "Zürich"),
        example("unicode-5", UNICODE, "today"),
        # every word and every pair of neighbouring words as an answer: with small windows some are cut by a
        # window boundary and some lie in the overlap of two windows, for every tokenizer
        *[example(f"num-{i}", NUMBERS, w, question="Which number?") for i, w in enumerate(words)],
        *[example(f"pair-{i}", NUMBERS, f"{a} {b}", question="Which numbers?")
          for i, (a, b) in enumerate(zip(words, words[1:], strict=False))],
    ]


SETTINGS = FeatureSettings(max_seq_length=24, doc_stride=5, max_query_length=6, is_training=True)


# ---------- independent expectations ----------
def context_tokens(tok, context):
    """Context tokens with offsets stripped of surrounding whitespace, straight from the tokenizer."""
    enc = tok(context, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [trimmed(context, s, e) for s, e in enc["offset_mapping"]]


def trimmed(context, s, e):
    """(s, e) without surrounding whitespace; a whitespace-only token becomes empty at its end."""
    while s < e and context[s].isspace():
        s += 1
    while e > s and context[e - 1].isspace():
        e -= 1
    return s, e


def classic_spans(n_tokens, window, stride):
    """Google BERT's rule, written as a closed form: starts k*stride until one window reaches the end."""
    if n_tokens <= window:
        return [(0, n_tokens)]
    last = -(-(n_tokens - window) // stride)  # ceil: first k with k*stride + window >= n_tokens
    return [(k * stride, min(window, n_tokens - k * stride)) for k in range(last + 1)]


def expected_answer_tokens(offsets, start_char, end_char):
    overlapping = [i for i, (s, e) in enumerate(offsets) if s < end_char and e > start_char and e > s]
    return overlapping[0], overlapping[-1]


def features_of(features, example_index):
    return [i for i in range(len(features)) if features.example_index[i] == example_index]


@pytest.fixture(scope="module", params=[(f, first) for first in (False, True) for f in FAMILIES],
                ids=lambda p: f"{p[0]}-{'context-first' if p[1] else 'question-first'}")
def family_features(request):
    """Every family in both orders: question first (default) and passage first (XLNet's classic recipe)."""
    family, context_first = request.param
    tok = tiny_tokenizer(family)
    examples = hand_built_examples()
    settings = dataclasses.replace(SETTINGS, context_first=context_first)
    return family, tok, examples, us.convert_examples_to_features(examples, tok, settings)


# ---------- per family ----------
def test_windows_labels_offsets_match_independent_computation(family_features):
    family, tok, examples, feats = family_features
    n_special = tok.num_special_tokens_to_add(pair=True)
    for k, ex in enumerate(examples):
        q_ids = tok(ex.question, add_special_tokens=False)["input_ids"][: SETTINGS.max_query_length]
        c_ids, c_offs = context_tokens(tok, ex.context)
        spans = classic_spans(len(c_ids), SETTINGS.max_seq_length - len(q_ids) - n_special, SETTINGS.doc_stride)
        rows = features_of(feats, k)
        assert len(rows) == len(spans), (family, ex.qas_id)
        answer = None if ex.is_impossible else expected_answer_tokens(c_offs, *ex.answer_char_span)
        for row, (start, length) in zip(rows, spans, strict=True):
            sl = feats.token_slice(row)
            ids, pmask, offs = feats.input_ids[sl], feats.p_mask[sl], feats.offsets[sl]
            cls = int(feats.cls_index[row])
            assert ids[cls] == tok.cls_token_id
            ctx_positions = np.flatnonzero(pmask == 0)
            ctx_positions = ctx_positions[ctx_positions != cls]
            assert ids[ctx_positions].tolist() == c_ids[start:start + length]
            assert [tuple(o) for o in offs[ctx_positions]] == c_offs[start:start + length]
            assert (offs[pmask == 1] == -1).all()
            # the window holds the (truncated) question and the pair template's special tokens
            assert len(ids) == len(q_ids) + length + n_special
            if answer is not None and start <= answer[0] and answer[1] < start + length:
                expected = (ctx_positions[answer[0] - start], ctx_positions[answer[1] - start], 0)
            else:
                expected = (cls, cls, 1)
            got = (feats.start_positions[row], feats.end_positions[row], feats.is_impossible[row])
            assert got == expected, (family, ex.qas_id, row)


def test_situations_are_all_covered(family_features):
    """Answer split across windows -> CLS there; answer in an overlap -> labelled in both windows."""
    family, _, examples, feats = family_features
    labelled = np.bincount(feats.example_index[feats.is_impossible == 0], minlength=len(examples))
    # short answers (a long unicode answer in a tiny byte-level vocabulary may not fit any window)
    short = np.array([not e.is_impossible and not e.qas_id.startswith("unicode") for e in examples])
    assert (labelled[short] >= 1).all(), family  # each answer is whole in some window
    assert (labelled >= 2).any(), family  # some answer sits in the overlap of two windows
    cut = 0
    for row in np.flatnonzero(feats.is_impossible == 1):
        ex = examples[feats.example_index[row]]
        if ex.is_impossible:
            continue
        sl = feats.token_slice(row)
        offs = feats.offsets[sl][feats.offsets[sl][:, 0] >= 0]
        s, e = ex.answer_char_span
        inside = (offs[:, 0] < e) & (offs[:, 1] > s)
        cut += bool(inside.any())  # part of the answer is in this window, labelled CLS
    assert cut >= 1, family


def test_labelled_span_maps_back_to_gold_text(family_features):
    family, tok, examples, feats = family_features
    for row in np.flatnonzero(feats.is_impossible == 0):
        ex = examples[feats.example_index[row]]
        sl = feats.token_slice(row)
        start, end = feats.start_positions[row], feats.end_positions[row]
        text = ex.context[feats.offsets[sl][start, 0]:feats.offsets[sl][end, 1]]
        assert text == ex.answers[0]["text"], (family, ex.qas_id, text)


def test_impossible_labelled_at_cls_in_every_window(family_features):
    _, _, examples, feats = family_features
    k = [e.qas_id for e in examples].index("impossible")
    rows = features_of(feats, k)
    assert rows and all(feats.start_positions[r] == feats.end_positions[r] == feats.cls_index[r] for r in rows)
    assert all(feats.is_impossible[r] == 1 for r in rows)


def test_max_context_matches_classic_score(family_features):
    _, tok, examples, feats = family_features
    n_special = tok.num_special_tokens_to_add(pair=True)
    for k, ex in enumerate(examples):
        q_len = len(tok(ex.question, add_special_tokens=False)["input_ids"][: SETTINGS.max_query_length])
        n_ctx = len(context_tokens(tok, ex.context)[0])
        spans = classic_spans(n_ctx, SETTINGS.max_seq_length - q_len - n_special, SETTINGS.doc_stride)
        owner_count = np.zeros(n_ctx, dtype=int)
        for row, (start, length) in zip(features_of(feats, k), spans, strict=True):
            sl = feats.token_slice(row)
            flags = feats.max_context[sl][feats.offsets[sl][:, 0] >= 0]
            for j, flag in enumerate(flags):
                pos = start + j
                scores = [min(pos - s, s + n - 1 - pos) + 0.01 * n for s, n in spans if s <= pos < s + n]
                mine = min(j, length - 1 - j) + 0.01 * length
                first_best = next(i for i, (s, n) in enumerate(spans) if s <= pos < s + n
                                  and min(pos - s, s + n - 1 - pos) + 0.01 * n == max(scores))
                assert bool(flag) == (spans[first_best][0] == start and mine == max(scores))
                owner_count[pos] += flag
        assert (owner_count == 1).all()
    assert not feats.max_context[feats.offsets[:, 0] < 0].any()


def test_p_mask_and_cls(family_features):
    _, tok, _, feats = family_features
    starts = feats.feature_start[:-1]
    assert (feats.p_mask[starts + feats.cls_index] == 0).all()
    assert (feats.offsets[starts + feats.cls_index] == -1).all()
    assert feats.padding_side == tok.padding_side
    assert feats.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("family", ["bert", "roberta", "xlnet"])
def test_window_overlap_gives_each_question_the_tokenizers_overflow_windows(family):
    """window_overlap (the tokenizers' and transformers 4's pipeline's doc_stride) in one call for questions of
    different lengths: each gets the windows of the tokenizer's own overflowing encoding with that overlap."""
    tok = tiny_tokenizer(family)
    context_first = tok.padding_side == "left"
    questions, context = ["Which number?", "Which number comes after three?"], NUMBERS + " " + NUMBERS
    examples = [example(f"q{k}", context, question=q) for k, q in enumerate(questions)]
    settings = FeatureSettings(max_seq_length=40, doc_stride=1, max_query_length=24, context_first=context_first,
                               window_overlap=4)
    feats = us.convert_examples_to_features(examples, tok, settings)
    windows = []
    for k, question in enumerate(questions):
        pair = (context, question) if context_first else (question, context)
        enc = tok(*pair, truncation="only_first" if context_first else "only_second", max_length=40, stride=4,
                  return_overflowing_tokens=True)
        rows = np.flatnonzero(feats.example_index == k)
        assert [feats.input_ids[feats.token_slice(r)].tolist() for r in rows] == enc["input_ids"]
        windows.append(len(rows))
    assert max(windows) >= 2  # the longer question's smaller window needs a second one


@pytest.mark.parametrize("context_first", [False, True], ids=["question-first", "context-first"])
@pytest.mark.parametrize("family", FAMILIES)
def test_layout_matches_the_tokenizers_own_pair_encoding(family, context_first):
    """Ids, token types, offsets and labels agree with the tokenizer's own overflowing pair encoding.

    With overlap = window - doc_stride, the tokenizer's overflow windows start doc_stride context tokens
    apart (the classic processor called it this way), whichever sequence comes first and is cut.
    """
    tok = tiny_tokenizer(family)
    settings = FeatureSettings(max_seq_length=20, doc_stride=3, max_query_length=12, context_first=context_first,
                               is_training=True)
    question = "Which number?"
    # "three four" is cut by the start of the second window; "eleven" sits in the overlap of all windows
    examples = [example("cut", NUMBERS, "three four", question=question),
                example("overlap", NUMBERS, "eleven", question=question)]
    feats = us.convert_examples_to_features(examples, tok, settings)
    n_q = len(tok(question, add_special_tokens=False)["input_ids"])
    assert n_q <= settings.max_query_length  # the tokenizer below cannot truncate the question for us
    window = settings.max_seq_length - n_q - tok.num_special_tokens_to_add(pair=True)
    pair = (NUMBERS, question) if context_first else (question, NUMBERS)
    enc = tok(*pair, truncation="only_first" if context_first else "only_second", max_length=settings.max_seq_length,
              stride=window - settings.doc_stride, return_overflowing_tokens=True, return_token_type_ids=True,
              return_offsets_mapping=True)
    n = len(enc["input_ids"])
    assert len(feats) == 2 * n and n > 2
    situations = []
    for k, ex in enumerate(examples):
        s_char, e_char = ex.answer_char_span
        for i in range(n):
            row = k * n + i
            sl = feats.token_slice(row)
            assert feats.input_ids[sl].tolist() == enc["input_ids"][i]
            assert feats.token_type_ids[sl].tolist() == enc["token_type_ids"][i]
            ctx = [j for j, seq in enumerate(enc.sequence_ids(i)) if seq == (0 if context_first else 1)]
            offsets = [trimmed(NUMBERS, *enc["offset_mapping"][i][j]) for j in ctx]
            assert [tuple(o) for o in feats.offsets[sl][ctx].tolist()] == offsets
            cls = enc["input_ids"][i].index(tok.cls_token_id)
            assert feats.cls_index[row] == cls
            assert np.flatnonzero(feats.p_mask[sl] == 0).tolist() == sorted([*ctx, cls])
            inside = [j for j, (s, e) in zip(ctx, offsets, strict=True) if s < e_char and e > s_char]
            whole = inside and offsets[ctx.index(inside[0])][0] <= s_char and offsets[ctx.index(inside[-1])][1] >= e_char
            expected = (inside[0], inside[-1]) if whole else (cls, cls)
            assert (feats.start_positions[row], feats.end_positions[row]) == expected
            situations.append((ex.qas_id, "whole" if whole else "cut" if inside else "absent"))
            if whole:
                text = NUMBERS[offsets[ctx.index(inside[0])][0]:offsets[ctx.index(inside[-1])][1]]
                assert text == ex.answers[0]["text"]
    # the situations above really occur
    assert ("cut", "cut") in situations and ("cut", "whole") in situations
    assert situations.count(("overlap", "whole")) >= 2


def test_xlnet_context_first_literal_and_left_padded_batch():
    """XLNet as its published SQuAD runs fed it: passage, <sep>, question, <sep>, <cls>; padded on the left."""
    tok = tiny_tokenizer("xlnet")
    ex = example("q", "The Normans gave their name to Normandy.", "Normans")
    f = us.convert_examples_to_features([ex], tok, FeatureSettings(16, 3, 4, context_first=True, is_training=True))
    rows = [tok.convert_ids_to_tokens(f.input_ids[f.token_slice(i)]) for i in range(len(f))]
    assert rows[0] == ["▁T", "he", "▁Norman", "s", "▁ga", "ve", "▁the", "ir", "▁na", "<sep>", "▁Wh", "o", "▁ga", "ve",
                       "<sep>", "<cls>"]
    assert rows[1][:3] == ["s", "▁ga", "ve"]  # the next window starts doc_stride=3 context tokens later
    assert rows[2][:3] == ["▁the", "ir", "▁na"]
    sl = f.token_slice(0)
    assert f.token_type_ids[sl].tolist() == [0] * 10 + [1] * 5 + [2]
    assert f.p_mask[sl].tolist() == [0] * 9 + [1] * 6 + [0]
    assert f.offsets[sl][:9].tolist() == [[0, 1], [1, 3], [4, 10], [10, 11], [12, 14], [14, 16], [17, 20],
                                          [20, 22], [23, 25]]
    assert (f.offsets[sl][9:] == -1).all()
    assert f.max_context[sl].astype(int).tolist() == [1] * 6 + [0] * 10
    assert f.cls_index.tolist() == [15, 15, 15]
    # "▁Norman" "s" in window 0; window 1 starts at "s", cutting the answer: CLS there and in window 2
    assert f.start_positions.tolist() == [2, 15, 15] and f.end_positions.tolist() == [3, 15, 15]
    assert f.is_impossible.tolist() == [0, 1, 1]
    short = us.convert_examples_to_features([example("s", "Normans.", "Normans")], tok,
                                            FeatureSettings(16, 3, 4, context_first=True, is_training=True))
    both = us.concat_features([f.select([0]), short])
    batch = batching.collate(both, [0, 1], with_labels=True, pad_to_multiple_of=8)
    pad = int(batch["left_pad"][1])
    assert pad == 16 - len(short.input_ids) and batch["left_pad"][0] == 0
    tokens = tok.convert_ids_to_tokens(batch["input_ids"][1].tolist())
    assert tokens == ["<pad>"] * pad + ["▁Norman", "s", ".", "<sep>", "▁Wh", "o", "▁ga", "ve", "<sep>", "<cls>"]
    # padding gets the tokenizer's pad type (XLNet's is 3, but transformers 5 resets it to 0: masked either way)
    assert batch["token_type_ids"][1].tolist() == [tok.pad_token_type_id] * pad + [0] * 4 + [1] * 5 + [2]
    assert batch["p_mask"][1].tolist() == [1.0] * pad + [0, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    assert (batch["cls_index"].tolist(), batch["start_positions"].tolist(), batch["end_positions"].tolist()) == (
        [15, 15], [2, pad], [3, pad + 1])
    assert tokens[batch["cls_index"][1]] == "<cls>"


# ---------- exact literal values ----------
def test_bert_uncased_literal_feature():
    tok = tiny_tokenizer("bert")
    ex = example("q", "The Normans gave their name to Normandy.", "Normans")
    f = us.convert_examples_to_features([ex], tok, FeatureSettings(16, 3, 4, is_training=True))
    sl = f.token_slice(0)
    assert tok.convert_ids_to_tokens(f.input_ids[sl]) == [
        "[CLS]", "who", "gave", "their", "name", "[SEP]",
        "the", "normans", "gave", "their", "name", "to", "normandy", ".", "[SEP]"]
    assert f.token_type_ids[sl].tolist() == [0] * 6 + [1] * 9
    assert f.p_mask[sl].tolist() == [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert f.offsets[sl][6:14].tolist() == [[0, 3], [4, 11], [12, 16], [17, 22], [23, 27], [28, 30], [31, 39],
                                            [39, 40]]
    assert (len(f), f.cls_index[0], f.start_positions[0], f.end_positions[0], f.is_impossible[0]) == (1, 0, 7, 7, 0)
    # text is never lowercased by us: offsets point into the original cased context
    assert ex.context[4:11] == "Normans"


def test_xlnet_literal_cls_at_end_and_cut_answer():
    tok = tiny_tokenizer("xlnet")
    ex = example("q", "The Normans gave their name to Normandy.", "Normans")
    f = us.convert_examples_to_features([ex], tok, FeatureSettings(16, 3, 4, is_training=True))
    rows = [tok.convert_ids_to_tokens(f.input_ids[f.token_slice(i)]) for i in range(len(f))]
    assert rows[0] == ["▁Wh", "o", "▁ga", "ve", "<sep>", "▁T", "he", "▁Norman", "s", "▁ga", "ve", "▁the", "ir",
                       "▁na", "<sep>", "<cls>"]
    assert rows[1][5] == "s"  # the second window starts 3 context tokens later, cutting "Normans"
    assert f.token_type_ids[f.token_slice(0)].tolist() == [0] * 5 + [1] * 10 + [2]
    assert f.cls_index.tolist() == [15, 15, 15]
    assert f.start_positions.tolist() == [7, 15, 15] and f.end_positions.tolist() == [8, 15, 15]
    assert f.is_impossible.tolist() == [0, 1, 1]
    assert f.offsets[f.token_slice(0)][7:9].tolist() == [[4, 10], [10, 11]]
    assert f.max_context[f.token_slice(0)].astype(int).tolist() == [0] * 5 + [1] * 6 + [0] * 5
    assert f.padding_side == "left"


def test_roberta_literal_leading_space_trimmed():
    tok = tiny_tokenizer("roberta")
    ex = example("q", "The Normans gave their name to Normandy.", "Normans")
    f = us.convert_examples_to_features([ex], tok, FeatureSettings(16, 3, 4, is_training=True))
    sl = f.token_slice(0)
    assert tok.convert_ids_to_tokens(f.input_ids[sl]) == [
        "<s>", "Who", "Ġg", "ave", "Ġthe", "</s>", "</s>", "The", "ĠNormans", "Ġg", "ave", "Ġthe", "ir", "Ġna", "me",
        "</s>"]
    # "ĠNormans" covers " Normans" in the raw offsets; the space is trimmed so the answer maps exactly
    assert f.offsets[sl][8].tolist() == [4, 11]
    assert (f.start_positions[0], f.end_positions[0], f.cls_index[0]) == (8, 8, 0)
    assert f.token_type_ids[sl].tolist() == [0] * 16


def test_context_first_puts_passage_first():
    tok = tiny_tokenizer("bert")
    ex = example("q", "The Normans gave their name to Normandy.", "Normans")
    f = us.convert_examples_to_features([ex], tok, FeatureSettings(16, 3, 4, context_first=True, is_training=True))
    sl = f.token_slice(0)
    assert tok.convert_ids_to_tokens(f.input_ids[sl]) == [
        "[CLS]", "the", "normans", "gave", "their", "name", "to", "normandy", ".", "[SEP]",
        "who", "gave", "their", "name", "[SEP]"]
    assert f.token_type_ids[sl].tolist() == [0] * 10 + [1] * 5
    assert (f.start_positions[0], f.end_positions[0]) == (2, 2)
    assert f.p_mask[sl].tolist() == [0] + [0] * 8 + [1] * 6


def test_too_small_max_seq_length_rejected():
    with pytest.raises(ValueError, match="must exceed max_query_length"):
        us.convert_examples_to_features([example("q", NORMANS, "The")], tiny_tokenizer("bert"),
                                        FeatureSettings(max_seq_length=67, max_query_length=64))


# ---------- lower-casing ----------
def test_do_lower_case_on_uncased_tokenizer_changes_nothing():
    tok = copy.deepcopy(tiny_tokenizer("bert"))
    before = tok.backend_tokenizer.to_str()
    us.apply_do_lower_case(tok, True)
    assert tok.backend_tokenizer.to_str() == before  # no second lower-casing step
    assert us.tokenizer_lowercases(tok)


def test_do_lower_case_on_cased_tokenizer_keeps_offsets_exact():
    tok = copy.deepcopy(tiny_tokenizer("bert-cased"))
    assert not us.tokenizer_lowercases(tok)
    us.apply_do_lower_case(tok, True)
    assert us.tokenizer_lowercases(tok)
    ex = example("q", UNICODE, "Zürich")
    f = us.convert_examples_to_features([ex], tok, FeatureSettings(64, 16, 8, is_training=True))
    sl = f.token_slice(0)
    s, e = f.start_positions[0], f.end_positions[0]
    assert UNICODE[f.offsets[sl][s, 0]:f.offsets[sl][e, 1]] == "Zürich"


# ---------- real data ----------
def normalize(text):
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def test_real_sample_classic_feature_count_and_recovery(squad_dir, minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    examples, _ = us.read_squad_examples(squad_dir / "train-v2.0.json", True, True)
    feats = us.convert_examples_to_features(examples, tok, FeatureSettings(is_training=True))
    assert len(feats) == 4037  # the classic converter's count; run_qa's overlap stride gives 3,949
    rows = np.flatnonzero(feats.is_impossible == 0)
    texts = us.labelled_answer_texts(feats, examples)
    good = sum(normalize(texts[r]) == normalize(examples[feats.example_index[r]].answers[0]["text"]) for r in rows)
    assert good / len(rows) >= 0.99


@pytest.mark.parametrize("family", FAMILIES)
def test_a_long_context_tokenized_in_pieces_gives_the_whole_texts_tokens(family, monkeypatch):
    """Contexts above LONG_CONTEXT_CHARS are tokenized piece by piece (bounded memory): the same ids, offsets and
    word ids as the whole text, whatever the family's normalizer and pre-tokenizer, across runs of spaces,
    tabs, newlines, punctuation and non-Latin text at the cuts."""
    from tiny_models import CORPUS

    text = "  \n".join(f"{s}\t {UNICODE}  ({NUMBERS})." for s in CORPUS[:14])
    backend = us.plain_backend(tiny_tokenizer(family).backend_tokenizer.to_str())
    whole = us._encoding_arrays(backend.encode(text, add_special_tokens=False))
    monkeypatch.setattr(us, "LONG_CONTEXT_CHARS", 97)
    assert len(us.piece_starts(text, 97)) > 20
    (pieces,) = us.encode_contexts(backend, [text])
    for name, ours, theirs in zip(("ids", "offsets", "word ids"), pieces, whole, strict=True):
        assert np.array_equal(ours, theirs), name
    short = us.encode_contexts(backend, [NORMANS, text, UNICODE])  # short ones batched, order kept
    assert np.array_equal(short[0][0], backend.encode(NORMANS, add_special_tokens=False).ids)
    assert np.array_equal(short[2][0], backend.encode(UNICODE, add_special_tokens=False).ids)
