"""Word-level tokenizer for the example needle model.

One token per word of :func:`longctx.eval.vocab.all_words` (lower-cased; punctuation marks are
their own tokens) plus ``<pad> <unk> <s> </s>``. Encoding adds ``<s>`` in front; decoding gives
the words back separated by spaces. Saved as a normal Hugging Face tokenizer directory
(tokenizer.json + tokenizer_config.json), so ``AutoTokenizer.from_pretrained(dir)`` loads it.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from longctx.eval import vocab

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS = [PAD, UNK, BOS, EOS]


def build_tokenizers_object(words: list[str] | None = None) -> Tokenizer:
    words = vocab.all_words() if words is None else words
    table = {t: i for i, t in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tok = Tokenizer(models.WordLevel(vocab=table, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # \w+ | [^\w\s]+, like vocab.words_of
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, table[BOS])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    return tok


def build_tokenizer(words: list[str] | None = None):
    """The tokenizer as a ``PreTrainedTokenizerFast`` with bos/eos/unk/pad set."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizers_object(words),
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        model_max_length=1 << 20, padding_side="left", clean_up_tokenization_spaces=False)


def save_tokenizer(out_dir: str, words: list[str] | None = None):
    tok = build_tokenizer(words)
    tok.save_pretrained(out_dir)
    return tok
