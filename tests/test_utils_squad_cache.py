"""Feature cache (keys, invalidation, atomic writes), select, batching, collate, threads."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import utils_squad as us
from squad_internals import atomic_io, batching
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


# ---------- special token ids baked into features ----------
@pytest.mark.parametrize("attribute,token", [("pad_token", "[MASK]"), ("cls_token", "[UNK]"), ("sep_token", "[MASK]")])
def test_special_token_change_rebuilds(tmp_path, data, builds, attribute, token):
    """Special tokens live on the Python tokenizer, not in its backend JSON: the key must still see them."""
    path, examples = data
    tok = copy.deepcopy(tiny_tokenizer("bert"))
    us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    setattr(tok, attribute, token)
    changed = us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    assert len(builds) == 2
    us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    assert len(builds) == 2  # and the new entry is reused
    assert changed.pad_token_id == tok.pad_token_id
    assert_same(changed, us.convert_examples_to_features(examples, tok, SETTINGS))


def test_pad_token_change_reaches_collate(tmp_path, data):
    path, examples = data
    tok = copy.deepcopy(tiny_tokenizer("bert"))
    us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    tok.pad_token = "[MASK]"
    feats = us.load_or_build_features(path, examples, tok, SETTINGS, tmp_path)
    batch = batching.collate(feats, [0, len(feats) - 1], with_labels=False, pad_to_multiple_of=64)
    assert batch["input_ids"][0, -1] == tok.convert_tokens_to_ids("[MASK]")


# ---------- orphan temporaries ----------
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # finished and reaped: no process has this id now (barring instant reuse)


def make_tmp(folder, name, age_s):
    path = folder / name
    path.write_bytes(b"partial")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_orphan_temporaries_removed_live_ones_kept(tmp_path, data):
    path, examples = data
    host, hour = atomic_io.host(), atomic_io.ORPHAN_TMP_AGE_S
    orphans = [
        make_tmp(tmp_path, f"cached_train_train_abc.npz.{host}-{dead_pid()}.x1y2.tmp", hour + 60),  # killed run
        make_tmp(tmp_path, "cached_train_train_abc.npz.otherhost-12.x1y2.tmp", hour + 60),  # shared folder
        make_tmp(tmp_path, "cached_train_eval_abc.npz.k3j4h5.tmp", 2 * hour),  # older naming
    ]
    kept = [
        make_tmp(tmp_path, f"cached_train_train_abc.npz.{host}-{dead_pid()}.a1.tmp", hour - 60),  # recent
        make_tmp(tmp_path, "cached_train_train_abc.npz.otherhost-12.b2.tmp", 60),  # another host, writing now
        make_tmp(tmp_path, f"cached_train_train_abc.npz.{host}-{os.getpid()}.c3.tmp", 5 * hour),  # writer alive
        make_tmp(tmp_path, "notes.tmp", 5 * hour),  # not ours
        make_tmp(tmp_path, "cached_train_train_abc.npz", 5 * hour),  # a finished entry
    ]
    us.load_or_build_features(path, examples, tiny_tokenizer("bert"), SETTINGS, tmp_path)
    assert [p.exists() for p in orphans] == [False] * len(orphans)
    assert [p.exists() for p in kept] == [True] * len(kept)


def test_temporary_name_names_its_writer(tmp_path, data, monkeypatch):
    path, examples = data
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src))
        return real_replace(src, dst)

    monkeypatch.setattr(us.os, "replace", spy)
    us.load_or_build_features(path, examples, tiny_tokenizer("bert"), SETTINGS, tmp_path)
    (tmp,) = seen
    assert atomic_io.writer_of(tmp) == (atomic_io.host(), os.getpid())
    assert tmp.match("cached_*.npz.*.tmp")
