"""Tiny tokenizers and random models of every family, built offline in well under a second each.

Tokenizers are trained with the `tokenizers` library on a small built-in corpus and wrapped in the
transformers 5 tokenizer class of each family, so the special tokens, pair template, normalizer and
padding side are the family's own.  `tiny_model_dir` saves a tiny random model with its tokenizer
(save_pretrained) so AutoTokenizer / AutoModelForQuestionAnswering load it from the folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

CORPUS = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "In what country is Normandy located? When were the Normans in Normandy? Who was the duke?",
    "Warsaw is the capital and largest city of Poland. It stands on the Vistula River in east-central Poland.",
    "The French and Indian War was fought between the colonies of British America and New France in 1754.",
    "Zürich and Genève are cities in Switzerland; a naïve café owner sold crème brûlée for 5 € in 2019.",
    "Tokyo (東京) is the capital of Japan; Москва is the capital of Russia.",
    "Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.",
    "What is the capital of Poland? Where is the Vistula? How many people live in Warsaw?",
    "The answer is at the very start and the very end of the context, and sometimes it is split.",
    "Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau.",
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen",
    "Who founded the city? Which river flows through it? What year did the war begin? Why did it end?",
    "Marie Curie won the Nobel Prize in Physics in 1903 and in Chemistry in 1911, the first person to win twice.",
    "The quick brown fox jumps over the lazy dog. 'Quoted' text, (parenthesised) text - and dashes.",
] * 3

FAMILIES = ("bert", "bert-cased", "electra", "distilbert", "albert", "xlnet", "deberta-v2", "roberta", "xlm",
            "modernbert")

_WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _train_wordpiece(lowercase: bool, vocab_size: int = 600) -> dict[str, int]:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=_WORDPIECE_SPECIALS)
    tok.train_from_iterator(CORPUS, trainer)
    return tok.get_vocab()


def _train_unigram(specials: list[str], unk: str, lowercase: bool, vocab_size: int = 400):
    tok = Tokenizer(models.Unigram())
    steps = [normalizers.NFKD(), normalizers.StripAccents()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=unk)
    tok.train_from_iterator(CORPUS, trainer)
    data = __import__("json").loads(tok.to_str())
    return [tuple(piece) for piece in data["model"]["vocab"]]


def _train_byte_bpe(specials: list[str], vocab_size: int = 500, lowercase: bool = False):
    tok = Tokenizer(models.BPE())
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    data = __import__("json").loads(tok.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["model"]["merges"]]
    return data["model"]["vocab"], merges


def _byte_bpe_with_template(specials: list[str], cls: str, sep: str, lowercase: bool, **special_tokens):
    """A generic fast tokenizer: byte-level BPE with the pair layout cls A sep B:1 sep:1."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _train_byte_bpe(specials, lowercase=lowercase)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=special_tokens["unk_token"]))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token=cls, sep_token=sep, **special_tokens)


def _build_xlm_like():
    """XLM has no fast tokenizer class: a generic fast tokenizer with XLM's <s> A </s> B </s> layout."""
    return _byte_bpe_with_template(["<s>", "</s>", "<pad>", "<unk>", "<special0>", "<special1>"], "<s>", "</s>",
                                   lowercase=True, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def _build_modernbert_like():
    """ModernBERT's layout: a byte-level BPE with [CLS] A [SEP] B [SEP] (its hub tokenizer is the same kind)."""
    return _byte_bpe_with_template(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"], "[CLS]", "[SEP]", lowercase=False,
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")


@functools.cache
def tiny_tokenizer(family: str):
    """A fresh-enough tiny fast tokenizer of the family (cached: do not mutate it; copy.deepcopy first)."""
    import transformers as tf

    if family in ("bert", "electra", "distilbert", "bert-cased"):
        lower = family != "bert-cased"
        cls = tf.DistilBertTokenizer if family == "distilbert" else tf.BertTokenizer
        return cls(vocab=_train_wordpiece(lower), do_lower_case=lower)
    if family == "albert":
        vocab = _train_unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"], "<unk>", lowercase=True)
        return tf.AlbertTokenizer(vocab=vocab, do_lower_case=True)
    if family == "xlnet":
        specials = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]
        return tf.XLNetTokenizer(vocab=_train_unigram(specials, "<unk>", lowercase=False), unk_id=0)
    if family == "deberta-v2":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        return tf.DebertaV2Tokenizer(vocab=_train_unigram(specials, "[UNK]", lowercase=False), unk_id=1)
    if family == "roberta":
        vocab, merges = _train_byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        return tf.RobertaTokenizer(vocab=vocab, merges=merges)
    if family == "xlm":
        return _build_xlm_like()
    if family == "modernbert":
        return _build_modernbert_like()
    raise ValueError(f"unknown family {family!r}; known: {FAMILIES}")


def tiny_config(family: str, tokenizer):
    """Config of a tiny random model: hidden 32, 2 layers, 2 heads, intermediate 37, 512 positions."""
    import transformers as tf

    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, pad_token_id=tokenizer.pad_token_id)
    bert_like = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                     max_position_embeddings=512, **common)
    if family in ("bert", "bert-cased"):
        return tf.BertConfig(**bert_like)
    if family == "electra":
        return tf.ElectraConfig(embedding_size=32, **bert_like)
    if family == "distilbert":
        return tf.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=512,
                                   **common)
    if family == "albert":
        return tf.AlbertConfig(embedding_size=16, **bert_like)
    if family == "deberta-v2":
        return tf.DebertaV2Config(**bert_like)
    if family == "roberta":
        # RoBERTa positions start after padding_idx: 514 positions hold 512 tokens.
        return tf.RobertaConfig(**{**bert_like, "max_position_embeddings": 514})
    if family == "xlnet":
        return tf.XLNetConfig(d_model=32, n_layer=2, n_head=2, d_inner=37, **common)
    if family == "xlm":
        return tf.XLMConfig(emb_dim=32, n_layers=2, n_heads=2, max_position_embeddings=512, **common)
    if family == "modernbert":
        # 3 layers, global attention every 3rd (layer 0) and a local window of 16 (8 each side), so features
        # longer than the window exercise both kinds of layer.
        return tf.ModernBertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40,
                                   max_position_embeddings=512, local_attention=16, global_attn_every_n_layers=3,
                                   cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                                   bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **common)
    raise ValueError(f"unknown family {family!r}")


_MODEL_DIRS: dict[tuple[str, int], Path] = {}


def tiny_model_dir(family: str, tmp_path_factory) -> Path:
    """Folder with a tiny random QA model + its tokenizer (built once per test session)."""
    key = (family, id(tmp_path_factory))
    if key not in _MODEL_DIRS:
        import torch
        from transformers import AutoModelForQuestionAnswering

        tokenizer = tiny_tokenizer(family)
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_config(tiny_config(family, tokenizer))
        path = tmp_path_factory.mktemp(f"tiny-{family}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        _MODEL_DIRS[key] = path
    return _MODEL_DIRS[key]
