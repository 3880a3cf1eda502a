"""Near-duplicate conversations across the dataset: MinHash signatures in an LSH index.

Two conversations are near-duplicates when the estimated Jaccard similarity of their word
3-gram sets (over the visible chat, roles included) reaches the task's
``quality.near_duplicate_threshold``. The LSH index (datasketch) finds the few candidates in
constant time per conversation, and each candidate is confirmed on its MinHash estimate, so a
run of any size checks every new conversation against every kept one, including those an
earlier run wrote (indexed at start), without keeping their texts: each kept conversation costs
one signature of ``NUM_PERM`` hash values plus its LSH bands in memory (about 4 KB).
"""

from __future__ import annotations

import re
import zlib
from typing import Any

from fms_dgt.conversation import Conversation
from fms_dgt.prefetch import settle

NUM_PERM = 128
SHINGLE = 3
_WORD = re.compile(r"\w+")  # Unicode words: the check is not limited to English


def shingles(conv: Conversation) -> set[bytes]:
    """Word 3-grams of the user and assistant messages as one stream, each message led by its role.

    A single stream (rather than per message) makes grams across message boundaries count too, so
    two chats built from the same sentences in another order are not taken for copies.
    """
    tokens: list[str] = []
    for message in conv.messages():
        if message["role"] in ("user", "assistant"):
            tokens.append(f"<{message['role']}>")
            tokens.extend(_WORD.findall(message["content"].lower()))
    if len(tokens) < SHINGLE:
        return {" ".join(tokens).encode()}
    return {" ".join(tokens[i : i + SHINGLE]).encode() for i in range(len(tokens) - SHINGLE + 1)}


class NearDuplicateIndex:
    """The kept conversations' signatures; ``find`` one similar to a new conversation, ``add`` it."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._signatures: dict[str, Any] = {}
        self._lsh: Any = None  # built on first use (see _load)

    def _load(self) -> None:
        """datasketch pulls in scipy (0.9 s to import here): imported on first use, not when the
        run starts, so the runner's prefetch thread can import it while the first requests run."""
        settle("datasketch")  # see fms_dgt.prefetch
        from datasketch import LeanMinHash, MinHash, MinHashLSH

        self._lean, self._minhash = LeanMinHash, MinHash
        # crc32: a C function, 4x cheaper per shingle than the default sha1 and as good here (the
        # signatures never leave the process; the permutations do the mixing).
        self._hash = zlib.crc32
        template = MinHash(num_perm=NUM_PERM, hashfunc=self._hash)
        # Building the permutations is most of a MinHash's cost: make them once and share them.
        self._permutations, self._scheme = template.permutations, template.scheme
        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)

    def __len__(self) -> int:
        return len(self._signatures)

    def signature(self, conv: Conversation) -> Any:
        if self._lsh is None:
            self._load()
        minhash = self._minhash(
            num_perm=NUM_PERM, hashfunc=self._hash, permutations=self._permutations, scheme=self._scheme
        )
        minhash.update_batch(list(shingles(conv)))
        return self._lean(minhash)

    def find(self, signature: Any) -> tuple[str, float] | None:
        """The id of a kept conversation at least ``threshold`` similar, with the estimate, or None."""
        best: tuple[str, float] | None = None
        for key in self._lsh.query(signature):
            similarity = signature.jaccard(self._signatures[key])
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (key, similarity)
        return best

    def add(self, conversation_id: str, signature: Any) -> None:
        if conversation_id in self._signatures:
            return
        self._signatures[conversation_id] = signature
        self._lsh.insert(conversation_id, signature)
