"""How much two texts share, for the stages' turn checks and the conversation gate: words, word
overlap, a run of words copied from another text, near-copies between two messages."""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    """The lower-case words of ``text`` (letters, digits and apostrophes)."""
    return re.findall(r"[a-z0-9']+", text.lower())


# Words of courtesy and filler, which say nothing about what a conversation was about (English).
COURTESY = frozenset(
    "thanks thank thankyou goodbye welcome great good nice lovely wonderful awesome amazing cheers"
    " have having later care again help helped helping helpful much really very appreciate"
    " appreciated today tonight soon bye byee take that this those these there then with from"
    " your yours will would could should just okay alright sounds sound definitely also time"
    " chat chatting talk talking conversation advice tips info information answer answers"
    " question questions everything anything something here what when well sure glad enjoy"
    " hope right know pleasure useful insights insight keep mind going done".split()
)
_WORD = re.compile(r"\w+")


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry content: 4+ letters (any script), no courtesy or filler."""
    return [w for w in _WORD.findall(text.lower()) if len(w) >= 4 and not w.isdigit() and w not in COURTESY]


def overlap(a: str, b: str) -> float:
    """Share of the shorter text's distinct words that also appear in the other (0..1)."""
    wa, wb = set(words(a)), set(words(b))
    if not wa or not wb:
        return 0.0
    return len(wa & wb) / min(len(wa), len(wb))


def shares_run(a: str, b: str, n: int) -> bool:
    """True if ``a`` contains ``n`` consecutive words of ``b`` (copy-paste detection)."""
    wb = words(b)
    if len(wb) < n:
        return False
    grams = {tuple(wb[i : i + n]) for i in range(len(wb) - n + 1)}
    wa = words(a)
    return any(tuple(wa[i : i + n]) in grams for i in range(len(wa) - n + 1))


# Near-copies between two messages, for the stages' turn checks and the conversation gate alike
# (a turn the gate would reject is rewritten where it is written, not found after the whole
# conversation was paid for): a run of this many consecutive words (all of the copied message
# when it is shorter, if it has at least MIN_COPY_WORDS), or word sets this similar.
USER_RUN, ASSISTANT_RUN, MIN_COPY_WORDS = 10, 8, 4
COPY_JACCARD, MIN_JACCARD_WORDS = 0.6, 6


class Words:
    """A message's words, with its word set and n-gram sets built once (checks compare every pair)."""

    def __init__(self, text: str) -> None:
        self.tokens = _WORD.findall(text.lower())
        self.set = set(self.tokens)
        self._grams: dict[int, set[tuple[str, ...]]] = {}

    def grams(self, n: int) -> set[tuple[str, ...]]:
        found = self._grams.get(n)
        if found is None:
            t = self.tokens
            found = self._grams[n] = {tuple(t[i : i + n]) for i in range(len(t) - n + 1)}
        return found


def copies(text: Words, source: Words, run: int) -> bool:
    """True if ``text`` reproduces ``source``: a run of ``run`` consecutive words of it (all of
    it when shorter, if it has at least MIN_COPY_WORDS), or nearly the same set of words."""
    n = min(run, len(source.tokens))
    if n >= MIN_COPY_WORDS and not text.grams(n).isdisjoint(source.grams(n)):
        return True
    a, b = text.set, source.set
    if len(a) < MIN_JACCARD_WORDS or len(b) < MIN_JACCARD_WORDS:
        return False
    common = len(a & b)
    return common / (len(a) + len(b) - common) >= COPY_JACCARD
