"""Fixed word lists used by the RULER-style task generators.

Everything a generator writes is built from these lists, so a word-level tokenizer built from
:func:`all_words` covers every generated text (no ``<unk>``). Three groups are kept disjoint on
purpose: filler words never contain a key, keys never appear in filler, and values are the
numbers ``10..99`` (one word each), which appear nowhere else.
"""

from __future__ import annotations

import re

# Tokens the word-level pre-tokenizer produces besides words (it splits on \w+ | [^\w\s]+).
PUNCTUATION = [".", ",", "?", ":", "-"]

# Keys of the needles ("the special magic number for <key> is <value>"). Single words.
KEYS = """
apple banana cherry grape lemon mango melon olive peach pear plum lime kiwi fig date guava
papaya apricot coconut walnut almond pepper onion carrot potato tomato garlic ginger celery
tiger lion zebra giraffe monkey panda koala rabbit turtle dolphin whale shark salmon eagle
falcon parrot penguin owl swan goose camel donkey horse pony moose beaver otter badger
squirrel hamster lizard cobra spider beetle wasp hornet moth lobster oyster octopus
hammer wrench shovel ladder bucket candle mirror pillow blanket kettle teapot spoon fork
ladle basket wallet helmet jacket sweater scarf glove boot sandal ribbon button zipper
violin guitar piano drum trumpet flute cello banjo harp tuba
diamond emerald ruby sapphire pearl amber copper silver bronze marble granite crystal
comet planet meteor galaxy nebula rocket satellite anchor compass lantern
""".split()

# Filler vocabulary for the haystack sentences (no key, no number, no needle word).
FILLER = {
    "det": "the a every some one this that".split(),
    "adj": """quiet small large old young bright dark warm cold gentle busy happy
        tired calm green blue red yellow brown tall short heavy light soft loud slow
        quick careful strange simple""".split(),
    "noun": """house garden river road city village forest field window door table
        chair book letter teacher student farmer doctor child friend neighbor
        family train bridge market school street hill valley cloud storm morning
        evening winter summer river boat song story picture kitchen office""".split(),
    "name": """anna ben carla david elena frank grace henry irene jack laura mark
        nina oscar paula robert sara tom""".split(),
    "verb": """sees finds watches opens closes paints builds visits reads writes
        cleans crosses follows remembers carries likes""".split(),
    "verb_i": """sleeps waits smiles rests walks sings laughs works listens
        wanders stays""".split(),
    "prep": "near behind beside under over across through into along".split(),
    "adv": "slowly quickly quietly often today again early later soon always".split(),
    "place": "town park station harbor castle library meadow lake".split(),
}

# Sentence templates of the haystack; {slot} is one word of FILLER[slot]. The lengths in
# tokens are fixed per template (words + the final "."), which lets the generator fill a
# requested token budget exactly.
TEMPLATES = [
    "{name} {verb_i} .",
    "{name} {verb_i} {adv} .",
    "the {noun} is {adj} .",
    "{det} {noun} {verb_i} {adv} .",
    "{name} {verb} the {noun} .",
    "{det} {adj} {noun} {verb_i} {adv} .",
    "{name} {verb} the {adj} {noun} .",
    "{det} {noun} {verb} the {adj} {noun} .",
    "{name} {verb_i} {prep} the {noun} {adv} .",
    "{det} {adj} {noun} {verb} the {noun} {prep} the {place} .",
    "{name} {verb} {det} {adj} {noun} {prep} the {adj} {place} .",
    "in the {adj} {place} {det} {noun} {verb_i} {adv} and {name} {verb_i} .",
]

# Fixed text of the tasks. Written as normal prose; the word-level tokenizer splits the
# punctuation off.
NIAH_INTRO = ("Some special magic numbers are hidden within the following text. Make sure to "
              "memorize it. I will quiz you about the numbers afterwards.")
NEEDLE = "The special magic number for {key} is {value}."
Q_SINGLE = ("What is the special magic number for {key} mentioned in the provided text? "
            "Answer: The special magic number for {key} is")
Q_MULTIVALUE = ("What are all the special magic numbers for {key} mentioned in the provided "
                "text? Answer: The special magic numbers for {key} are")
Q_MULTIQUERY = ("What are all the special magic numbers for {keys} mentioned in the provided "
                "text? Answer: The special magic numbers for {keys} are")
KV_INTRO = ("Below is a list of keys and their values. Make sure to memorize it. I will ask "
            "you about the value of one key afterwards.")
KV_PAIR = "{key}: {value},"
Q_KV = "What is the value of the key {key} in the list? Answer: The value of the key {key} is"
VT_INTRO = ("Some values are hidden within the following text. Make sure to memorize it. I will quiz "
            "you about the values afterwards.")
VT_VALUE = "The value of {key} is {value}."
VT_COPY = "The value of {key} is the value of {source}."
Q_VT = "What is the value of {key} in the provided text? Answer: The value of {key} is"

VALUE_MIN, VALUE_MAX = 10, 99  # values are the numbers 10..99, one word each

_WORD = re.compile(r"\w+|[^\w\s]+")


def words_of(text: str) -> list[str]:
    """Split text the way the word-level tokenizer does (lower-cased \\w+ | punctuation)."""
    return _WORD.findall(text.lower())


def all_words() -> list[str]:
    """Every word or punctuation token a generator can emit, sorted, without duplicates."""
    words: set[str] = set(PUNCTUATION)
    words.update(KEYS)
    for group in FILLER.values():
        words.update(group)
    for text in (NIAH_INTRO, NEEDLE, Q_SINGLE, Q_MULTIVALUE, Q_MULTIQUERY, KV_INTRO, KV_PAIR,
                 Q_KV, VT_INTRO, VT_VALUE, VT_COPY, Q_VT, *TEMPLATES):
        words.update(words_of(re.sub(r"\{\w+\}", " ", text)))
    words.update(words_of(" and "))
    words.update(str(v) for v in range(VALUE_MIN, VALUE_MAX + 1))
    return sorted(words)
