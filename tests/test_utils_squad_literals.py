"""Exact labels and offsets, written out by hand, for one tokenizer of each kind.

The numbers were read off the printed tokens of each feature and checked against the characters of
the context (below each family); nothing here is computed from the tokenizer's own offsets.

NORMANS: "The" is characters 0-3, "France" 53-59 (the context has no final period).
UNICODE: "Zürich" 0-6, 2 spaces, "and" 8-11, 3 spaces, "Genève" 14-20, "are" 21-24, "cities" 25-31,
";" 31, 2 spaces, "a" 34, "naïve" 36-41, "café" 42-46, 2 spaces, "owner" 48-53 (end-exclusive).
"""

import pytest

import utils_squad as us
from tiny_models import tiny_tokenizer
from utils_squad import FeatureSettings, SquadExample

NORMANS = "The Normans gave their name to Normandy, a region in France"
UNICODE = "Zürich  and   Genève are cities;  a naïve café  owner"
CASES = {
    "start": (NORMANS, "The", 0),
    "end": (NORMANS, "France", 53),
    "impossible": (NORMANS, None, None),
    "unicode": (UNICODE, "café  owner", 42),
}

# family, context_first -> case -> (start, end, cls_index, answer tokens, answer token offsets)
LITERALS = {
    # WordPiece, cased: [CLS] Who ? [SEP] The(4) Normans ... France(15) [SEP]
    ("bert-cased", False): {
        "start": (4, 4, 0, ["The"], [[0, 3]]),
        "end": (15, 15, 0, ["France"], [[53, 59]]),
        "impossible": (0, 0, 0, ["[CLS]"], [[-1, -1]]),
        # [CLS] Who ? [SEP] Zürich and Genève are cities ; a naïve café(12) owner(13) [SEP]
        "unicode": (12, 13, 0, ["café", "owner"], [[42, 46], [48, 53]]),
    },
    # SentencePiece (unigram), lower-cased and accents stripped: [CLS] ▁wh o ? [SEP] ▁the(5) ...
    ("albert", False): {
        "start": (5, 5, 0, ["▁the"], [[0, 3]]),
        "end": (25, 25, 0, ["▁france"], [[53, 59]]),
        "impossible": (0, 0, 0, ["[CLS]"], [[-1, -1]]),
        # "é" became "e" in the normalizer but its offset is still the "é" (45-46); the "▁" before
        # "own" stands for the double space and is aligned to the first character of "owner"
        "unicode": (23, 28, 0, ["▁ca", "f", "e", "▁", "own", "er"],
                    [[42, 44], [44, 45], [45, 46], [48, 49], [48, 51], [51, 53]]),
    },
    # SentencePiece, passage first, CLS last: ▁T(0) he ... ▁France(23) <sep> ▁Wh o ? <sep> <cls>(29)
    ("xlnet", True): {
        "start": (0, 1, 29, ["▁T", "he"], [[0, 1], [1, 3]]),
        "end": (23, 23, 29, ["▁France"], [[53, 59]]),
        "impossible": (29, 29, 29, ["<cls>"], [[-1, -1]]),
        # 26 passage tokens (0-25), <sep> 26, question 27-29, <sep> 30, <cls> 31
        "unicode": (20, 25, 31, ["▁ca", "f", "e", "▁", "own", "er"],
                    [[42, 44], [44, 45], [45, 46], [48, 49], [48, 51], [51, 53]]),
    },
    # SentencePiece, cased, no accent in its tiny vocabulary: [CLS] ▁Wh o ? [SEP] ▁T(5) he(6) ...
    ("deberta-v2", False): {
        "start": (5, 6, 0, ["▁T", "he"], [[0, 1], [1, 3]]),
        "end": (28, 28, 0, ["▁France"], [[53, 59]]),
        "impossible": (0, 0, 0, ["[CLS]"], [[-1, -1]]),
        # "é" is [UNK] at 45-46; the lone "▁" for the double space is empty (48, 48)
        "unicode": (27, 32, 0, ["▁ca", "f", "[UNK]", "▁", "own", "er"],
                    [[42, 44], [44, 45], [45, 46], [48, 48], [48, 51], [51, 53]]),
    },
    # byte-level BPE: <s> Who ? </s> </s> The(5) ĠNormans ... ĠFrance(22) </s>; the leading space of a
    # "Ġ" token is not part of its offsets
    ("roberta", False): {
        "start": (5, 5, 0, ["The"], [[0, 3]]),
        "end": (22, 22, 0, ["ĠFrance"], [[53, 59]]),
        "impossible": (0, 0, 0, ["<s>"], [[-1, -1]]),
        # "é" is the two bytes "Ã©" (45-46); the first of the two spaces is a "Ġ" of its own, empty once trimmed
        "unicode": (29, 34, 0, ["Ġc", "af", "Ã©", "Ġ", "Ġo", "wner"],
                    [[42, 43], [43, 45], [45, 46], [47, 47], [48, 49], [49, 53]]),
    },
}


def feature(family, context_first, case):
    context, answer, start = CASES[case]
    answers = [] if answer is None else [{"text": answer, "answer_start": start}]
    ex = SquadExample(case, "Who?", context, answers, answer is None)
    assert answer is None or context[start:start + len(answer)] == answer
    settings = FeatureSettings(48, 16, 8, context_first=context_first, is_training=True)
    feats = us.convert_examples_to_features([ex], tiny_tokenizer(family), settings)
    assert len(feats) == 1  # one window: the literals are positions in it
    return ex, feats


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("family,context_first", list(LITERALS))
def test_literal_labels_and_offsets(family, context_first, case):
    start, end, cls, tokens, offsets = LITERALS[family, context_first][case]
    ex, f = feature(family, context_first, case)
    sl = f.token_slice(0)
    got = (int(f.start_positions[0]), int(f.end_positions[0]), int(f.cls_index[0]))
    assert got == (start, end, cls)
    assert tiny_tokenizer(family).convert_ids_to_tokens(f.input_ids[sl][start:end + 1].tolist()) == tokens
    assert f.offsets[sl][start:end + 1].tolist() == offsets
    assert f.is_impossible[0] == (case == "impossible")
    if case != "impossible":
        assert ex.context[offsets[0][0]:offsets[-1][1]] == ex.answers[0]["text"]
