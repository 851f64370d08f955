"""Multi-query key-value recall: assignments and later queries inserted into real text, for training and evaluation.

A recall window is a window of real text (``seq_len + 1`` tokens) with N pairs inserted at chosen positions::

    ... text ...\\nKV_3f9a = "80417"\\n ... text ... \\nassert KV_3f9a == "80417"\\n ... text ...

Each query comes after its assignment, at a key-to-query *distance* (tokens from the assignment's first value
digit to the query's first value digit) drawn uniformly inside one of the distance bins (``BIN_EDGES``; the last
bin runs to the longest distance the window holds, and bins that do not fit are dropped). Pair i of a window
goes to bin ``(r + i) % n_bins`` for a random r, so the pairs spread evenly over the bins. Each pair's
assignment start is drawn uniformly among the starts where both its lines land on tokens no other pair took
(longest distances placed first; in a window too crowded for the drawn distance, another of the bin is drawn).
The real text keeps its order: removing the inserted spans gives back the window's first
``seq_len + 1 - inserted`` tokens.

Keys are ``KV_`` and four hex digits. A key is an evaluation key iff a hash of it falls below
``EVAL_KEY_SHARE``; training windows draw only the other keys, so the two sets are disjoint by construction (as
for the passkey keys). Values are ``VALUE_DIGITS`` random decimal digits. The pieces are tokenized one by one
(fixed text, each key character, each value digit), so every value digit is exactly one token the scorer knows,
whatever the tokenizer, and the format holds only token ids (picklable, for DataLoader workers).

Training: whether global stream position p holds a recall window, and its keys, values, bins and positions,
follow from (seed, p) alone, so ranks and workers agree and a resumed run sees the same windows. Evaluation:
a fixed set of validation-split windows with evaluation keys (``eval_windows``), scored by lighthouse's recall
evaluation. The standard library and numpy only.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np

from .passkey_format import Encoder, TokenSource, read_cyclic

KEY_PREFIX = "KV_"
KEY_HEX = 4  # 65536 keys: ~6.5k for evaluation, the rest for training
EVAL_KEY_SHARE = 0.1
VALUE_DIGITS = 5
BIN_EDGES = (64, 1024, 4096, 16384)  # lower edges of the distance bins
ASSIGN = ("\n" + KEY_PREFIX, ' = "', '"\n')  # text before the key, between key and value, after the value
QUERY = ("\nassert " + KEY_PREFIX, ' == "', '"\n')
_HEX = "0123456789abcdef"


# ---- keys and randomness ----------------------------------------------------------------------------------
def rng_for(*parts: object) -> np.random.Generator:
    """A generator seeded by a hash of ``parts``: the same parts give the same draws on every rank and worker."""
    digest = hashlib.sha256(":".join(["lighthouse-recall", *map(str, parts)]).encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))


def is_eval_key(key: str) -> bool:
    """Whether ``key`` (the hex part, e.g. '3f9a') is held out for evaluation."""
    digest = hashlib.sha256(f"lighthouse-recall-key:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < EVAL_KEY_SHARE


@cache
def key_set(evaluation: bool) -> tuple[str, ...]:
    """Every key (hex part) of the evaluation or the training set, sorted."""
    keys = (format(i, f"0{KEY_HEX}x") for i in range(16**KEY_HEX))
    return tuple(k for k in keys if is_eval_key(k) == evaluation)


# ---- distance bins ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bin:
    lo: int  # smallest distance
    hi: int  # one past the largest distance
    label: str  # nominal edges, e.g. '1k-4k', '16k-32k'


def _short(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def distance_bins(seq_len: int, shortest: int, longest: int) -> list[Bin]:
    """The bins of ``BIN_EDGES`` (the last one up to ``seq_len``) that hold a distance in [shortest, longest],
    clipped to that range."""
    edges = [e for e in BIN_EDGES if e < seq_len]
    bins = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else seq_len
        a, b = max(lo, shortest), min(hi, longest + 1)
        if a < b:
            bins.append(Bin(a, b, f"{_short(lo)}-{_short(hi)}"))
    return bins


# ---- the format ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecallFormat:
    """Token ids of the pieces of an assignment and a query, each piece encoded on its own."""

    assign: tuple[np.ndarray, np.ndarray, np.ndarray]  # before the key, between key and value, after the value
    query: tuple[np.ndarray, np.ndarray, np.ndarray]
    hex_ids: np.ndarray  # [16]: the token of '0' .. 'f'
    digit_ids: np.ndarray  # [10]: the token of '0' .. '9'
    value_digits: int = VALUE_DIGITS

    @classmethod
    def from_tokenizer(cls, tokenizer: Encoder, value_digits: int = VALUE_DIGITS) -> RecallFormat:
        def one_token(char: str) -> int:
            ids = np.asarray(tokenizer.encode(char), dtype=np.int64)
            if ids.shape != (1,):
                raise ValueError(f"the tokenizer encodes {char!r} as {len(ids)} tokens; recall needs one per character")
            return int(ids[0])

        def encode(text: str) -> np.ndarray:
            return np.asarray(tokenizer.encode(text), dtype=np.int64)

        hex_ids = np.array([one_token(c) for c in _HEX], dtype=np.int64)
        return cls(tuple(map(encode, ASSIGN)), tuple(map(encode, QUERY)), hex_ids, hex_ids[:10].copy(), value_digits)

    def line(self, pieces: tuple[np.ndarray, ...], key: str, value: np.ndarray) -> np.ndarray:
        """An assignment or query line: pieces[0] key pieces[1] value pieces[2] (``value``: digits 0-9)."""
        key_ids = self.hex_ids[[_HEX.index(c) for c in key]]
        return np.concatenate([pieces[0], key_ids, pieces[1], self.digit_ids[value], pieces[2]])

    def value_offset(self, pieces: tuple[np.ndarray, ...]) -> int:
        """Where the value starts inside a line."""
        return len(pieces[0]) + KEY_HEX + len(pieces[1])

    def line_length(self, pieces: tuple[np.ndarray, ...]) -> int:
        return self.value_offset(pieces) + self.value_digits + len(pieces[2])

    @property
    def pair_length(self) -> int:
        return self.line_length(self.assign) + self.line_length(self.query)

    @property
    def shortest(self) -> int:
        """The shortest distance at which a query starts after its assignment ends."""
        return self.line_length(self.assign) - self.value_offset(self.assign) + self.value_offset(self.query)

    def longest(self, window_len: int) -> int:
        """The longest distance a window of ``window_len`` tokens holds (assignment first, query last)."""
        return (
            window_len - self.line_length(self.query) - self.value_offset(self.assign) + self.value_offset(self.query)
        )

    def bins(self, window_len: int) -> list[Bin]:
        return distance_bins(window_len - 1, self.shortest, self.longest(window_len))


def byte_upper_bound_pair_length() -> int:
    """An upper bound of a pair's tokens under any tokenizer that spends at most one token per UTF-8 byte."""
    text = sum(len(t.encode()) for t in (*ASSIGN, *QUERY))
    return text + 2 * (KEY_HEX + VALUE_DIGITS)


def check_room(seq_len: int, pairs: int, pair_length: int | None = None) -> str | None:
    """Why ``pairs`` pairs do not fit a window of ``seq_len + 1`` tokens, or None. Inserted text may fill at most
    half the window (the rest stays real text, and placement then always finds room), and the first bin must fit."""
    n = pair_length or byte_upper_bound_pair_length()
    window = seq_len + 1
    if 2 * pairs * n > window:
        return f"{pairs} pairs of up to {n} tokens would fill more than half of a window of {window} tokens"
    if window < BIN_EDGES[0] + n + 1:
        need = BIN_EDGES[0] + n + 1
        return f"a window of {window} tokens holds no key-to-query distance >= {BIN_EDGES[0]} (needs {need})"
    return None


# ---- windows --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecallWindow:
    """A window with pairs inserted, and where its queries are (one entry per pair, in pair order)."""

    tokens: np.ndarray  # int64 [window_len]
    keys: tuple[str, ...]
    values: np.ndarray  # int64 [n, value_digits]: the digits 0-9
    bins: np.ndarray  # int64 [n]: index into the window's bin list
    distances: np.ndarray  # int64 [n]
    assign_pos: np.ndarray  # int64 [n]: position of the assignment's first value digit
    query_pos: np.ndarray  # int64 [n]: position of the query's first value digit
    inserted: np.ndarray  # bool [window_len]: True where a token belongs to an inserted line


def insert_pairs(
    fmt: RecallFormat, text: np.ndarray, rng: np.random.Generator, pairs: int, evaluation: bool
) -> RecallWindow:
    """``text`` (int64 [W]) with ``pairs`` assignment/query pairs inserted, W tokens long: the text's first
    W - inserted tokens, in order, around the inserted lines. Keys from the evaluation or the training set."""
    window_len = len(text)
    bins = fmt.bins(window_len)
    if not bins or (why := check_room(window_len - 1, pairs, fmt.pair_length)):
        raise ValueError(f"recall windows of {window_len} tokens cannot hold {pairs} pairs: {why or 'no bin fits'}")
    keys = key_set(evaluation)
    chosen = [keys[i] for i in rng.choice(len(keys), size=pairs, replace=False)]
    values = rng.integers(0, 10, size=(pairs, fmt.value_digits))
    first = int(rng.integers(len(bins)))
    bin_of = np.array([(first + i) % len(bins) for i in range(pairs)], dtype=np.int64)
    distances = np.array([rng.integers(bins[b].lo, bins[b].hi) for b in bin_of], dtype=np.int64)
    va, vq = fmt.value_offset(fmt.assign), fmt.value_offset(fmt.query)
    la, lq = fmt.line_length(fmt.assign), fmt.line_length(fmt.query)
    taken = np.zeros(window_len, dtype=bool)
    starts = np.full((pairs, 2), -1, dtype=np.int64)  # [pair, (assignment, query)]
    # Longest distances first: they have the fewest places to go.
    for i in sorted(range(pairs), key=lambda i: -distances[i]):
        b = bins[bin_of[i]]
        s, distances[i] = _place(taken, la, lq, va - vq, int(distances[i]), b, rng)
        shift = va + int(distances[i]) - vq  # query start minus assignment start
        taken[s : s + la] = taken[s + shift : s + shift + lq] = True
        starts[i] = (s, s + shift)
    tokens = np.empty(window_len, dtype=np.int64)
    tokens[~taken] = text[: window_len - int(taken.sum())]
    for i in range(pairs):
        tokens[starts[i, 0] : starts[i, 0] + la] = fmt.line(fmt.assign, chosen[i], values[i])
        tokens[starts[i, 1] : starts[i, 1] + lq] = fmt.line(fmt.query, chosen[i], values[i])
    return RecallWindow(tokens, tuple(chosen), values, bin_of, distances, starts[:, 0] + va, starts[:, 1] + vq, taken)


def _free_starts(taken_before: np.ndarray, length: int) -> np.ndarray:
    """bool [W - length + 1]: whether [s, s + length) holds no taken token (``taken_before``: int32 [W + 1], the
    taken tokens before each position)."""
    return taken_before[length:] == taken_before[:-length]


def _place(
    taken: np.ndarray, la: int, lq: int, offset: int, distance: int, b: Bin, rng: np.random.Generator
) -> tuple[int, int]:
    """(assignment start, distance): a start drawn uniformly among those where both lines land on free tokens.
    Where the drawn distance has none (a crowded window), other distances of the bin are drawn, then tried in
    order; check_room keeps half the window free, so that last resort is for tiny windows only."""
    taken_before = np.zeros(len(taken) + 1, dtype=np.int32)
    np.cumsum(taken, dtype=np.int32, out=taken_before[1:])
    free_a, free_q = _free_starts(taken_before, la), _free_starts(taken_before, lq)

    def valid(d: int) -> np.ndarray:
        shift = offset + d
        last = len(taken) - lq - shift
        return np.flatnonzero(free_a[: last + 1] & free_q[shift : shift + last + 1])

    redraws = (int(rng.integers(b.lo, b.hi)) for _ in range(16))  # lazy: drawn only when needed
    for d in itertools.chain([distance], redraws, range(b.lo, b.hi)):
        options = valid(d)
        if len(options):
            return int(options[rng.integers(len(options))]), d
    raise RuntimeError(f"no room left for a recall pair at distances {b.lo}-{b.hi - 1} in {len(taken)} tokens")


class RecallMix:
    """A ``WindowMix`` (stream.py): which training windows get recall pairs (training keys), and their tokens.

    The settings are checked once, in DataSettings; this checks only that the tokenized pairs fit."""

    def __init__(self, fraction: float, fmt: RecallFormat, seq_len: int, seed: int, pairs: int):
        self.fraction, self.format, self.seq_len, self.seed, self.pairs = float(fraction), fmt, seq_len, seed, pairs
        why = check_room(seq_len, pairs, fmt.pair_length)
        if why:
            raise ValueError(f"recall_pairs={pairs} does not fit seq_len={seq_len}: {why}")
        self.bins = fmt.bins(seq_len + 1)

    def document(self, position: int, window: np.ndarray) -> RecallWindow | None:
        """The recall window made of ``window`` at global stream ``position``, or None for a plain window."""
        rng = rng_for("train", self.seed, position)
        if rng.random() >= self.fraction:
            return None
        return insert_pairs(self.format, window, rng, self.pairs, evaluation=False)

    def __call__(self, position: int, window: np.ndarray) -> np.ndarray:
        doc = self.document(position, window)
        return window if doc is None else doc.tokens


def recall_mix(fraction: float, tokenizer: Encoder, seq_len: int, seed: int, pairs: int) -> RecallMix | None:
    """The training stream's recall mix (None when ``fraction`` is 0: the corpus is served unchanged)."""
    if fraction == 0:
        return None
    return RecallMix(fraction, RecallFormat.from_tokenizer(tokenizer), seq_len, seed, pairs)


@dataclass(frozen=True)
class RecallSet:
    """The fixed evaluation windows of one configuration, with the bins their queries are counted in."""

    bins: list[Bin]
    windows: list[RecallWindow]
    value_digits: int


def eval_windows(
    tokenizer: Encoder, filler: TokenSource, seq_len: int, n_windows: int, pairs: int, seed: int = 0
) -> RecallSet:
    """``n_windows`` windows of ``seq_len + 1`` tokens of ``filler`` (the validation split; starts spread evenly
    over it), each with ``pairs`` evaluation-key pairs: the same set for the same arguments, every time."""
    fmt = RecallFormat.from_tokenizer(tokenizer)
    windows = []
    for i in range(n_windows):
        rng = rng_for("eval", seed, seq_len, pairs, i)
        text = read_cyclic(filler, i * filler.n_tokens // n_windows, seq_len + 1)
        windows.append(insert_pairs(fmt, text, rng, pairs, evaluation=True))
    return RecallSet(fmt.bins(seq_len + 1), windows, fmt.value_digits)
