"""batching.py: epoch plans, padded arrays, the prefetcher (packed arrays: test_packing.py)."""

import numpy as np
import pytest

import utils_squad as us
from squad_internals import batching
from tiny_models import tiny_tokenizer
from utils_squad import FeatureSettings


def test_length_grouped_batches_deterministic_complete_and_grouped():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 400, size=1000)
    a = batching.length_grouped_batches(lengths, 8, seed=3)
    b = batching.length_grouped_batches(lengths, 8, seed=3)
    c = batching.length_grouped_batches(lengths, 8, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=False))
    assert sorted(np.concatenate(a).tolist()) == list(range(1000))
    padded = sum(len(x) * lengths[x].max() for x in a)
    random_padded = sum(len(x) * lengths[x].max() for x in np.array_split(rng.permutation(1000), 125))
    assert padded < 0.75 * random_padded  # grouping removes most padding


def test_length_grouping_off_gives_the_classic_random_batches():
    """--length_grouping off: the seeded permutation cut into consecutive batches (their order shuffled)."""
    lengths = np.random.default_rng(1).integers(10, 400, size=203)
    plan = batching.PaddedBatches(8, batching.SpanHead(), "bert", grouped=False).plan(lengths, seed=5)
    perm = np.random.default_rng(5).permutation(203)
    expected = {frozenset(perm[i:i + 8].tolist()) for i in range(0, 203, 8)}
    assert [len(b) for b in plan].count(8) == 25 and {frozenset(b.tolist()) for b in plan} == expected
    grouped = batching.PaddedBatches(8, batching.SpanHead(), "bert").plan(lengths, seed=5)
    assert {frozenset(b.tolist()) for b in grouped} != expected  # the default groups by length


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
    batch = batching.collate(feats, [0, 1], with_labels=True, pad_to_multiple_of=8)
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
    assert "start_positions" not in batching.collate(feats, [1], with_labels=False)


def test_eval_batches_are_the_same_for_any_number_of_processes():
    lengths = np.array([5, 9, 3, 9, 1, 7, 2])
    batches = batching.eval_batches(lengths, 3)
    assert [b.tolist() for b in batches] == [[4, 6, 2], [0, 5, 1], [3]]


def test_the_prefetcher_yields_every_build_in_order_and_raises_where_it_failed():
    def build(job):
        if job == 5:
            raise ValueError("bad job 5")
        return job * job

    fetched = batching.Prefetcher(range(5), build)
    assert list(fetched) == [0, 1, 4, 9, 16]
    fetched.close()
    failing = batching.Prefetcher(range(10), build)
    seen = []
    with pytest.raises(ValueError, match="bad job 5"):
        for value in failing:
            seen.append(value)
    assert seen == [0, 1, 4, 9, 16]
    failing.close()
    endless = batching.Prefetcher(iter(int, 1), lambda job: job)  # never ends: close() must stop the thread
    assert next(iter(endless)) == 0
    endless.close()
    assert not endless._thread.is_alive()
