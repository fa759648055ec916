"""Feature cache (keys, invalidation, atomic writes), select, batching, collate, threads."""

import dataclasses
import json

import numpy as np
import pytest

import utils_squad as us
from tiny_models import tiny_tokenizer
from utils_squad import FeatureSettings

CONTEXT = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"


def write_data(path, n=6, context=CONTEXT):
    words = context.split()
    qas = [{"id": f"q{i}", "question": "Which number?",
            "answers": [{"text": words[i], "answer_start": context.index(words[i])}]} for i in range(n)]
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": [{"context": context, "qas": qas}]}]}))
    return path


@pytest.fixture
def data(tmp_path):
    path = write_data(tmp_path / "train.json")
    examples, _ = us.read_squad_examples(path, False, True)
    return path, examples


@pytest.fixture
def builds(monkeypatch):
    """Counts real featurization runs (a cache hit does not run it)."""
    calls = []
    real = us.convert_examples_to_features

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(us, "convert_examples_to_features", counting)
    return calls


SETTINGS = FeatureSettings(max_seq_length=16, doc_stride=3, max_query_length=4, is_training=True)


def assert_same(a, b):
    for name, value in a.arrays().items():
        assert np.array_equal(value, b.arrays()[name]), name


def test_cache_hit_and_equal(tmp_path, data, builds):
    path, examples = data
    tok = tiny_tokenizer("bert")
    first = us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path / "cache")
    second = us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path / "cache")
    assert len(builds) == 1
    assert_same(first, second)
    assert not list((tmp_path / "cache").glob("*.tmp"))


@pytest.mark.parametrize("change", [
    {"max_seq_length": 20}, {"doc_stride": 2}, {"max_query_length": 3}, {"context_first": True},
    {"is_training": False},
])
def test_any_setting_change_rebuilds(tmp_path, data, builds, change):
    path, examples = data
    tok = tiny_tokenizer("bert")
    us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    changed = us.load_or_build_features(path, examples, tok, dataclasses.replace(SETTINGS, **change), tmp_path)
    assert len(builds) == 2
    assert_same(changed, us.convert_examples_to_features(examples, tok, dataclasses.replace(SETTINGS, **change)))


def test_file_content_change_rebuilds(tmp_path, data, builds):
    path, examples = data
    tok = tiny_tokenizer("bert")
    us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path / "c")
    path.write_text(path.read_text().replace("Which number?", "Which number is it?"))
    examples2, _ = us.read_squad_examples(path, False, True)
    feats = us.load_or_build_features(path, examples2, tok, SETTINGS, tmp_path / "c")
    assert len(builds) == 2
    assert_same(feats, us.convert_examples_to_features(examples2, tok, SETTINGS))


def test_tokenizer_or_reader_flag_change_rebuilds(tmp_path, data, builds):
    path, examples = data
    us.load_or_build_features(path, examples, tiny_tokenizer("bert"), SETTINGS, tmp_path)
    us.load_or_build_features(path, examples, tiny_tokenizer("bert-cased"), SETTINGS, tmp_path)
    v2_examples, _ = us.read_squad_examples(path, True, True)  # same file, other reader flags
    v2_examples[0].is_impossible = True
    us.load_or_build_features(path, v2_examples, tiny_tokenizer("bert"), SETTINGS, tmp_path)
    assert len(builds) == 3


def test_overwrite_cache_rebuilds(tmp_path, data, builds):
    path, examples = data
    tok = tiny_tokenizer("bert")
    us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path, overwrite_cache=True)
    assert len(builds) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_cache_is_rebuilt_not_loaded(tmp_path, data, builds, damage):
    path, examples = data
    tok = tiny_tokenizer("bert")
    good = us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    (cache_file,) = tmp_path.glob("cached_*.npz")
    raw = cache_file.read_bytes()
    cache_file.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": raw[:100] + b"x" * (len(raw) - 100),
                            "empty": b""}[damage])
    again = us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    assert len(builds) == 2
    assert_same(good, again)
    assert us.load_features(cache_file, us.features_cache_key(path, examples, tok, SETTINGS), len(examples))


def test_failed_write_leaves_no_file(tmp_path, data, monkeypatch):
    path, examples = data
    feats = us.convert_examples_to_features(examples, tiny_tokenizer("bert"), SETTINGS)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        us.save_features(tmp_path / "cache" / "x.npz", feats, "k")
    assert list((tmp_path / "cache").iterdir()) == []


def test_select_round_trip(data):
    _, examples = data
    feats = us.convert_examples_to_features(examples, tiny_tokenizer("bert"), SETTINGS)
    idx = np.array([3, 0, 2])
    sub = feats.select(idx)
    assert len(sub) == 3 and sub.lengths().tolist() == feats.lengths()[idx].tolist()
    for j, i in enumerate(idx):
        assert np.array_equal(sub.input_ids[sub.token_slice(j)], feats.input_ids[feats.token_slice(i)])
        assert np.array_equal(sub.offsets[sub.token_slice(j)], feats.offsets[feats.token_slice(i)])
    assert sub.example_index.tolist() == feats.example_index[idx].tolist()


def test_threads_give_identical_features(data, monkeypatch):
    _, examples = data
    tok = tiny_tokenizer("xlnet")
    monkeypatch.setattr(us, "CHUNK_EXAMPLES", 2)  # several chunks -> several worker tasks
    assert_same(us.convert_examples_to_features(examples, tok, SETTINGS, threads=1),
                us.convert_examples_to_features(examples, tok, SETTINGS, threads=2))


# ---------- batching ----------
def test_length_grouped_batches_deterministic_complete_and_grouped():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 400, size=1000)
    a = us.length_grouped_batches(lengths, 8, shuffle=True, seed=3)
    b = us.length_grouped_batches(lengths, 8, shuffle=True, seed=3)
    c = us.length_grouped_batches(lengths, 8, shuffle=True, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    padded = sum(len(x) * lengths[x].max() for x in a)
    random_padded = sum(len(x) * lengths[x].max() for x in np.array_split(rng.permutation(1000), 125))
    assert padded < 0.75 * random_padded  # grouping removes most padding
    assert len(us.length_grouped_batches(lengths[:1001 - 5], 8, True, 0, drop_last=True)) == 124
    evaluation = us.length_grouped_batches(lengths, 8, shuffle=False, seed=0)
    order = np.concatenate(evaluation)
    assert sorted(order.tolist()) == list(range(1000)) and (np.diff(lengths[order]) <= 0).all()


def small_features(family):
    examples = [us.SquadExample("a", "Who?", "The Normans gave their name to Normandy.",
                                [{"text": "Normandy", "answer_start": 31}], False),
                us.SquadExample("b", "Who gave their name to the region?", "The Normans.", [], True)]
    # two examples of different lengths
    return us.convert_examples_to_features(examples, tiny_tokenizer(family), FeatureSettings(64, 16, 16, is_training=True))


@pytest.mark.parametrize("family", ["bert", "xlnet"])
def test_collate_pads_on_the_tokenizer_side(family):
    feats = small_features(family)
    lengths = feats.lengths()
    batch = us.collate(feats, [0, 1], with_labels=True, pad_to_multiple_of=8)
    width = int(-(-lengths.max() // 8) * 8)
    assert batch["input_ids"].shape == (2, width)
    left = family == "xlnet"
    for row in range(2):
        ids = feats.input_ids[feats.token_slice(row)].tolist()
        pad = width - lengths[row]
        got = batch["input_ids"][row].tolist()
        if left:
            assert got == [feats.pad_token_id] * pad + ids
            assert batch["left_pad"][row] == pad
        else:
            assert got == ids + [feats.pad_token_id] * pad
            assert batch["left_pad"][row] == 0
        shift = int(batch["left_pad"][row])
        assert batch["attention_mask"][row].sum() == lengths[row]
        assert batch["input_ids"][row, batch["cls_index"][row]] == tiny_tokenizer(family).cls_token_id
        assert batch["start_positions"][row] == feats.start_positions[row] + shift
        assert batch["end_positions"][row] == feats.end_positions[row] + shift
        pm = batch["p_mask"][row].tolist()
        assert pm[shift:shift + lengths[row]] == feats.p_mask[feats.token_slice(row)].tolist()
        assert all(v == 1 for i, v in enumerate(pm) if not shift <= i < shift + lengths[row])
    assert batch["is_impossible"].tolist() == [0.0, 1.0]
    assert "start_positions" not in us.collate(feats, [1], with_labels=False)
