"""The merges a sentencepiece BPE vocabulary implies, when its GGUF file lists none.

Every way of cutting a token into two tokens of the vocabulary is a merge. The merges are ranked by the
whole token's score (best first), then by the left part's length, then by the right part's length (both
longest first); ties keep vocabulary order. That is transformers' `generate_merges(vocab, scores)`, the
order the reference tokenizer uses, and the result here is the same list.

Its plain form looks up ~1.2 million substrings on Gemma's 262k vocabulary (over a second in Python). Here
the lookups are numpy: every substring gets a 64-bit polynomial hash from prefix sums over the code points,
is looked up in a hash table of the tokens' hashes, and every match is then compared code point by code
point, so a hash collision can never add a wrong merge. (Two tokens sharing a hash, which the table could
not tell apart, send the vocabulary to the plain loop instead, as do NaN scores.)
"""

import numpy as np

_BASE = 0x9E3779B97F4A7C15  # odd, so invertible modulo 2**64
_LENGTH_MIX = 0xC2B2AE3D27D4EB4F  # folds the length into each hash


def generate_merges(vocab: dict[str, int], scores) -> list[tuple[str, str]]:
    """Merges of `vocab` ({token: index}, in the order tokens were first listed; a token listed twice keeps
    its last index), each token scored by `scores[index]`."""
    keys = list(vocab)
    key_scores = np.asarray(scores, dtype=np.float64)[np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))]
    merges = None if np.isnan(key_scores).any() else _vectorized(keys, key_scores)
    return _plain(keys, key_scores.tolist(), vocab) if merges is None else merges


def _plain(keys: list[str], key_scores: list, index: dict) -> list[tuple[str, str]]:
    """The loop itself, step for step (NaN scores make the sort depend on the order it starts from)."""
    found = []
    for token, score in zip(keys, key_scores):
        cuts = [(token[:c], token[c:], score) for c in range(1, len(token))]
        kept = [m for m in cuts if m[0] in index and m[1] in index]
        found += sorted(kept, key=lambda m: (index[m[0]], index[m[1]]))
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


def _vectorized(keys: list[str], key_scores: np.ndarray) -> list[tuple[str, str]] | None:
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=len(keys))
    chars = np.frombuffer("".join(keys).encode("utf-32-le"), dtype=np.uint32)
    starts = np.zeros(len(keys), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])

    with np.errstate(over="ignore"):
        # hash(s) = sum (s[k] + 1) * B**k (mod 2**64), from prefix sums of (char + 1) * B**position
        total = len(chars)
        powers = np.empty(total + 1, dtype=np.uint64)
        powers[0] = 1
        np.cumprod(np.full(total, _BASE, dtype=np.uint64), out=powers[1:])
        inverse = np.empty(total + 1, dtype=np.uint64)
        inverse[0] = 1
        np.cumprod(np.full(total, pow(_BASE, -1, 2**64), dtype=np.uint64), out=inverse[1:])
        prefix = np.zeros(total + 1, dtype=np.uint64)
        np.cumsum((chars.astype(np.uint64) + np.uint64(1)) * powers[:total], out=prefix[1:])
        del powers

        def substring_hash(begin, end):
            mixed = (end - begin).astype(np.uint64) * np.uint64(_LENGTH_MIX)
            return (prefix[end] - prefix[begin]) * inverse[begin] + mixed

        table = _Table(substring_hash(starts, starts + lengths))
        if table.has_duplicates:
            return None

        # every cut: token u, left part u[:cut], right part u[cut:]
        cuts_per = np.maximum(lengths - 1, 0)
        u = np.repeat(np.arange(len(keys), dtype=np.int64), cuts_per)
        first = np.cumsum(cuts_per) - cuts_per
        cut = np.arange(len(u), dtype=np.int64) - np.repeat(first, cuts_per) + 1
        begin = starts[u]
        left = table.find(substring_hash(begin, begin + cut))
        found = left >= 0
        u, cut, left, begin = u[found], cut[found], left[found], begin[found]
        right = table.find(substring_hash(begin + cut, begin + lengths[u]))
        found = right >= 0
        u, cut, left, right = u[found], cut[found], left[found], right[found]

    exact = (lengths[left] == cut) & (lengths[right] == lengths[u] - cut)
    exact[exact] = _same_text(chars, starts, lengths, u[exact], cut[exact], left[exact], right[exact])
    u, cut, left, right = u[exact], cut[exact], left[exact], right[exact]

    # best score first, then longer left, then longer right; ties in vocabulary order (u ascending)
    rank = np.lexsort((u, cut - lengths[u], -cut, -key_scores[u]))
    names = np.array(keys, dtype=object)
    return list(zip(names[left[rank]].tolist(), names[right[rank]].tolist()))


class _Table:
    """Open addressing over the tokens' hashes (linear probing, a quarter full): hash -> token index."""

    _MIX = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, hashes: np.ndarray):
        self.hashes = hashes
        bits = max(int(4 * len(hashes) - 1).bit_length(), 4)
        self.mask, self.shift = (1 << bits) - 1, np.uint64(64 - bits)
        self.slots = np.full(1 << bits, -1, dtype=np.int64)
        self.has_duplicates = False
        pending = np.arange(len(hashes), dtype=np.int64)
        at = self._home(hashes)
        while len(pending):
            free = self.slots[at] < 0
            self.slots[at[free]] = pending[free]  # of several for one slot, one wins; the rest probe on
            moved = self.slots[at] != pending
            pending, at = pending[moved], (at[moved] + 1) & self.mask
        # two tokens with one hash: the table cannot tell them apart
        self.has_duplicates = not np.array_equal(self.find(hashes), np.arange(len(hashes)))

    def _home(self, hashes: np.ndarray) -> np.ndarray:
        return ((hashes * self._MIX) >> self.shift).astype(np.int64)  # the well-mixed high bits

    def find(self, hashes: np.ndarray) -> np.ndarray:
        """The token with each hash, or -1."""
        result = np.full(len(hashes), -1, dtype=np.int64)
        todo = np.arange(len(hashes), dtype=np.int64)
        at = self._home(hashes)
        while len(todo):
            token = self.slots[at]
            empty = token < 0
            hit = ~empty & (self.hashes[np.where(empty, 0, token)] == hashes[todo])
            result[todo[hit]] = token[hit]
            go_on = ~(empty | hit)
            todo, at = todo[go_on], (at[go_on] + 1) & self.mask
        return result


def _same_text(chars, starts, lengths, u, cut, left, right) -> np.ndarray:
    """Whether each cut's two parts spell its token exactly (a hash match is only a candidate)."""
    n = lengths[u].astype(np.int32)
    which = np.repeat(np.arange(len(u), dtype=np.int32), n)
    pos = np.arange(len(which), dtype=np.int32) - np.repeat((np.cumsum(n) - n).astype(np.int32), n)
    in_right = pos >= np.repeat(cut.astype(np.int32), n)
    mine = np.repeat(starts[u].astype(np.int32), n) + pos
    theirs = np.where(
        in_right, np.repeat((starts[right] - cut).astype(np.int32), n), np.repeat(starts[left].astype(np.int32), n)
    )
    theirs += pos
    return np.bincount(which[chars[mine] != chars[theirs]], minlength=len(u)) == 0
