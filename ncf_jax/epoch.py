"""One epoch of training examples: a pure function of (seed, epoch, global example index).

An epoch of P training positives and k negatives per positive holds M = P·(1 + k) examples,
cut into fixed-shape batches of B (global) examples; the last batches are padded with
weight-0 examples (user 0, item 0, label 0) up to `num_batches`, a multiple of
`batch_multiple`, so every epoch has the same shapes. Example g < M is:

  s = perm(g)                 a keyed bijection of [0, M): an alternating (unbalanced) Feistel
                              network on ceil(log2 M) bits, 4 rounds of a keyed 32-bit mixer,
                              with cycle walking back into [0, M): O(1) per example, no sort
  s < P                       positive s: (train_users[s], train_items[s]), label 1
  s >= P, t = s - P           negative t of positive t // k: that user, an item drawn by
                              `negative_items`, label 0

Negative t's candidates are the words of Threefry-2x32 under the epoch's key at counters
(t, 0), (t, 1), ... (two words each): the first word w < 2^32 - (2^32 mod I) whose item
w mod I the user has not interacted with is taken (so every allowed item is exactly equally
likely). After `NEGATIVE_ROUNDS` rejected words, the exact fallback: the item of rank
w mod (I - known) among the user's allowed items (w from counter (t, FALLBACK_COUNTER)),
found by a binary search in the user's sorted known items. The only inexactness is that
fallback's modulo, bias below (I - known) / 2^32, on the rare entries that reach it.

Nothing depends on how many devices or processes share the work, or on which executor
computes it: `host_examples` (NumPy, compacting the entries still to do) and
`device_examples` (jax.numpy inside jit: every lane gets what almost every lane needs, the
few lanes left go through a small fixed-size buffer) run the same uint32 arithmetic
(`counter_random`) and return the same integers.

Membership ("has user u interacted with item i") uses a bitmap of users x items bits when it
has at most 2^32 cells (ML-20M: 3.7e9 bits = 463 MB), else a binary search of the user's
sorted known items (CSR: 4 bytes per interaction + 4 per user); both executors use the same
structure, which on the devices is replicated (each device draws the negatives of its slice
of the batch, for any user; sharding it by user would need an exchange per draw).
"""

import dataclasses
import math

import numpy as np

from ncf_jax import counter_random as cr
from ncf_jax.errors import ConfigError, DataError

NEGATIVE_ROUNDS = 8  # keyed candidates per negative (4 Threefry calls) before the fallback
FALLBACK_COUNTER = 0x7FFFFFFF
FEISTEL_ROUNDS = 4
MAX_BITMAP_CELLS = 2**32  # cells (user, item) addressable by a uint32 index
_STREAM_TAG = 0x4E434631  # 'NCF1': the key of this epoch definition, apart from other uses


def num_batches_per_epoch(num_positives: int, num_negatives: int, batch_size: int,
                          batch_multiple: int = 1) -> int:
  """Batches in an epoch, rounded up to a multiple of `batch_multiple`."""
  batches = -(-num_positives * (1 + num_negatives) // batch_size)
  return -(-batches // batch_multiple) * batch_multiple


def epoch_keys(seed: int, epoch: int) -> np.ndarray:
  """The epoch's six uint32 key words: two for the negatives, four Feistel round keys."""
  seed = int(seed) % 2**64
  base = (seed & 0xFFFFFFFF, (seed >> 32) ^ _STREAM_TAG)
  words = []
  for use in range(3):
    words += cr.threefry2x32_scalar(base, int(epoch) & 0xFFFFFFFF, use)
  return np.array(words, dtype=np.uint32)


@dataclasses.dataclass(frozen=True)
class EpochSpec:
  """The static numbers of an epoch's definition (hashable: a jit static)."""
  num_positives: int
  num_items: int
  num_negatives: int
  reject: bool  # draw negatives among the user's unknown items (else among all items)
  use_bitmap: bool
  search_steps: int  # binary-search steps covering the largest known-item list
  # Expected share of first candidates rejected (sizes the device executor's buffers only).
  first_reject_rate: float = 0.0

  @property
  def num_examples(self) -> int:
    return self.num_positives * (1 + self.num_negatives)

  @property
  def perm_bits(self) -> int:
    return max(2, math.ceil(math.log2(max(self.num_examples, 2))))

  @property
  def accept_below(self) -> int:
    """Words at or above this are rejected: the rest map onto items evenly by `mod`."""
    return 2**32 - 2**32 % self.num_items


def build_arrays(train_users: np.ndarray, train_items: np.ndarray, known_users: np.ndarray,
                 known_items: np.ndarray, num_users: int, num_items: int, num_negatives: int,
                 reject: bool, use_bitmap: bool | None = None
                 ) -> tuple[EpochSpec, dict[str, np.ndarray]]:
  """(spec, arrays) of an epoch's definition. `known_*`: the pairs negatives must avoid
  (training pairs, plus held-out ones when they are excluded too)."""
  num_positives = len(train_users)
  if num_positives * (1 + num_negatives) >= 2**32:
    raise ConfigError(f'config.num_negatives={num_negatives}: an epoch of '
                      f'{num_positives * (1 + num_negatives)} examples exceeds 2^32')
  keys = known_users.astype(np.int64) * num_items + known_items.astype(np.int64)
  if not np.all(keys[1:] > keys[:-1]):  # training pairs come sorted and unique: no sort
    keys = np.unique(keys)
  users, items = (keys // num_items).astype(np.int32), (keys % num_items).astype(np.int32)
  degree = np.bincount(users, minlength=num_users)
  offsets = np.zeros(num_users + 1, np.int32)
  np.cumsum(degree, out=offsets[1:])
  if reject and len(degree) and degree.max() >= num_items:
    user = int(np.argmax(degree))
    raise DataError(f'user {user} has interacted with all {num_items} items: no item is left '
                    'to draw as a negative (set config.reject_positives=False)')
  # Allowed items below each known item: the key of the rank-select fallback.
  rank = items - (np.arange(len(items), dtype=np.int32) - offsets[users])
  if use_bitmap is None:
    use_bitmap = num_users * num_items <= MAX_BITMAP_CELLS
  bitmap = np.zeros(1, np.uint32)
  if use_bitmap:
    cells = keys.astype(np.uint64)
    bitmap = np.zeros(max(1, -(-num_users * num_items // 32)), np.uint32)
    # Distinct cells set distinct bits of a word, so their sum is their OR.
    word, first = np.unique(cells >> 5, return_index=True)
    if len(word):
      bitmap[word] = np.add.reduceat(np.left_shift(np.uint32(1), (cells & 31).astype(np.uint32)),
                                     first).astype(np.uint32)
  sentinel = np.array([num_items], np.int32)  # never found; keeps gathers in range when empty
  word_rejected = (2**32 % num_items) / 2**32
  known_share = 0.0
  if reject and num_positives:  # negatives are drawn per positive: weight users by positives
    per_user = np.bincount(train_users, minlength=num_users)
    known_share = float(per_user @ degree[:len(per_user)].astype(np.float64)) / (
        num_positives * num_items)
  spec = EpochSpec(num_positives, num_items, num_negatives, bool(reject), bool(use_bitmap),
                   search_steps=int(degree.max(initial=0)).bit_length() + 1,
                   first_reject_rate=min(1.0, word_rejected + known_share))
  arrays = dict(pos_users=train_users.astype(np.int32), pos_items=train_items.astype(np.int32),
                offsets=offsets, known=np.concatenate([items, sentinel]),
                known_rank=np.concatenate([rank, sentinel]), bitmap=bitmap)
  return spec, arrays


def state_bytes(arrays: dict[str, np.ndarray]) -> int:
  return sum(a.nbytes for a in arrays.values())


def planned_state_bytes(num_users: int, num_items: int, num_positives: int,
                        num_known: int | None = None, use_bitmap: bool | None = None) -> dict:
  """Bytes of `build_arrays`' output for a dataset of these sizes, by part (without building
  it): positives 8 per positive; CSR 4 per user + 8 per known pair; the bitmap 1 bit per
  (user, item) cell when used."""
  num_known = num_positives if num_known is None else num_known
  if use_bitmap is None:
    use_bitmap = num_users * num_items <= MAX_BITMAP_CELLS
  parts = dict(positives=8 * num_positives, csr=4 * (num_users + 1) + 8 * (num_known + 1),
               bitmap=4 * max(1, -(-num_users * num_items // 32)) if use_bitmap else 4)
  parts['total'] = sum(parts.values())
  parts['use_bitmap'] = use_bitmap
  return parts


# --- the definition, in array operations common to NumPy and jax.numpy ---------------------

def _mask(xp, bits: int):
  return xp.uint32((1 << bits) - 1)


def feistel(xp, spec: EpochSpec, keys, x):
  """One pass of the keyed bijection on [0, 2^perm_bits) (uint32 in, uint32 out)."""
  w = spec.perm_bits
  lo_bits = (w // 2, w - w // 2)
  for r in range(FEISTEL_ROUNDS):
    a, b = (lo_bits[0], lo_bits[1]) if r % 2 == 0 else (lo_bits[1], lo_bits[0])
    high, low = x >> xp.uint32(b), x & _mask(xp, b)
    mixed = high ^ (cr.mix32(xp, low, keys[2 + r:3 + r]) & _mask(xp, a))
    x = (low << xp.uint32(a)) | mixed
  return x


def _lower_bound(xp, values, lo, hi, target, steps: int):
  """First index in [lo, hi) whose value is >= target (hi if none); values sorted there."""
  last = values.shape[0] - 1

  def step(lo, hi):
    active = lo < hi
    mid = lo + (hi - lo) // 2
    right = active & (values[xp.minimum(mid, last)] < target)
    return xp.where(right, mid + 1, lo), xp.where(active & ~right, mid, hi)

  if xp is np:
    for _ in range(steps):
      lo, hi = step(lo, hi)
    return lo
  import jax  # pylint: disable=g-import-not-at-top
  # A rolled loop: unrolled, each step's gather took XLA's CPU compiler ~0.15 s.
  return jax.lax.fori_loop(0, steps, lambda _, c: step(*c), (lo, hi))[0]


def contains(xp, spec: EpochSpec, arrays, users, items):
  """Whether each (user, item) is a known pair."""
  if spec.use_bitmap:
    cell = users.astype(xp.uint32) * xp.uint32(spec.num_items) + items.astype(xp.uint32)
    word = arrays['bitmap'][cell >> xp.uint32(5)]
    return ((word >> (cell & xp.uint32(31))) & xp.uint32(1)) == 1
  start, stop = arrays['offsets'][users], arrays['offsets'][users + 1]
  at = _lower_bound(xp, arrays['known'], start, stop, items, spec.search_steps)
  return (at < stop) & (arrays['known'][xp.minimum(at, stop)] == items)


def candidate(xp, spec: EpochSpec, arrays, users, word):
  """(item, accepted) for candidate words of the given users."""
  item = word % xp.uint32(spec.num_items)
  ok = word < xp.uint32(spec.accept_below) if spec.accept_below < 2**32 else word == word
  if spec.reject:
    ok = ok & ~contains(xp, spec, arrays, users, item)
  return item.astype(xp.int32), ok


def rank_select(xp, spec: EpochSpec, arrays, users, keys, t):
  """The fallback: an allowed item of the user, by rank (exact membership, never a known one)."""
  word = cr.threefry2x32(xp, (keys[0:1], keys[1:2]), t,
                         xp.full(t.shape, FALLBACK_COUNTER, xp.uint32))[0]
  start, stop = arrays['offsets'][users], arrays['offsets'][users + 1]
  if not spec.reject:
    return (word % xp.uint32(spec.num_items)).astype(xp.int32)
  allowed = (spec.num_items - (stop - start)).astype(xp.uint32)
  rank = (word % allowed).astype(xp.int32)
  below = _lower_bound(xp, arrays['known_rank'], start, stop, rank + 1, spec.search_steps)
  return rank + (below - start)


def candidate_words(xp, keys, t, pair: int):
  return cr.threefry2x32(xp, (keys[0:1], keys[1:2]), t, xp.full(t.shape, pair, xp.uint32))


# --- the host executor's driver (NumPy; work shrinks to the entries still undecided) --------

def host_permute(spec: EpochSpec, keys: np.ndarray, g: np.ndarray) -> np.ndarray:
  x = feistel(np, spec, keys, g.astype(np.uint32))
  todo = np.flatnonzero(x >= spec.num_examples)
  while todo.size:  # cycle walking: at most 2^w / M < 2 passes expected
    y = feistel(np, spec, keys, x[todo])
    x[todo] = y
    todo = todo[y >= spec.num_examples]
  return x


def host_negatives(spec: EpochSpec, arrays, keys, users: np.ndarray, t: np.ndarray
                   ) -> np.ndarray:
  items = np.zeros(len(t), np.int32)
  todo = np.arange(len(t))
  for pair in range(NEGATIVE_ROUNDS // 2):
    words = candidate_words(np, keys, t[todo], pair)
    for w in range(2):
      word = words[w]
      item, ok = candidate(np, spec, arrays, users[todo], word)
      items[todo[ok]] = item[ok]
      todo = todo[~ok]
      if w == 0:
        words = (None, words[1][~ok])
      if not todo.size:
        return items
  items[todo] = rank_select(np, spec, arrays, users[todo], keys, t[todo])
  return items


def host_examples(spec: EpochSpec, arrays, keys: np.ndarray, g: np.ndarray):
  """(users int32, items int32, labels float32) of global example indices g (all < M)."""
  s = host_permute(spec, keys, g)
  positive = s < spec.num_positives
  t = s - np.uint32(spec.num_positives)  # wraps for positives; unused there
  j = np.where(positive, s, t // np.uint32(spec.num_negatives))
  users = arrays['pos_users'][j]
  items = np.empty(len(g), np.int32)
  items[positive] = arrays['pos_items'][s[positive]]
  neg = ~positive
  items[neg] = host_negatives(spec, arrays, keys, users[neg], t[neg])
  return users, items, positive.astype(np.float32)


# --- the device executor's driver (jax.numpy inside jit; fixed shapes) ---------------------
#
# A vectorised loop runs until its slowest lane is done: the cycle walk's while loop over a
# whole batch ran ~9 Feistel passes where the host needs 1.35 per index on average, and the
# rejection loop checked two candidates of every lane per round where almost every lane
# takes its first. So every lane gets the passes almost all need (two Feistel passes, the
# first candidate), and the few lanes left are gathered into a small buffer of a static size
# (expected count + 6 standard deviations) where the loops run to the end; while lanes are
# left (a batch with more than the buffer holds: rare), the next ones go through the buffer.
# The same integers for any buffer size: the buffer only decides which lanes compute when.
# (One copy of each loop in the program: a full-batch fallback beside the buffer tripled
# the compile time.)

BUFFER_SIGMAS = 6.0
BUFFER_MARGIN = 32
PERMUTE_PASSES_FOR_ALL = 2


def buffer_size(lanes: int, fraction: float) -> int:
  """Buffer for the lanes left of `lanes`, each left with probability `fraction`: the
  expected count plus BUFFER_SIGMAS standard deviations plus BUFFER_MARGIN, a multiple of 8."""
  mean = lanes * fraction
  size = math.ceil(mean + BUFFER_SIGMAS * math.sqrt(mean) + BUFFER_MARGIN)
  return min(lanes, -(-size // 8) * 8)


def _compact(jnp, lax, mask, size: int):
  """The positions of `mask`'s first `size` True entries in order, padded with len(mask).

  Without a scatter or a prefix sum over every lane (both slow on XLA's CPU backend): the
  mask packed into 32-bit words, a prefix sum of their popcounts, and for each buffer slot a
  binary search for its word and then for its bit within the word. (`jnp.searchsorted` and
  `lax.associative_scan` each took seconds to compile here.)"""
  n = mask.shape[0]
  bits = jnp.pad(mask, (0, -n % 32)).reshape(-1, 32).astype(jnp.uint32)
  lane = jnp.arange(32, dtype=jnp.uint32)
  words = jnp.sum(bits << lane[None, :], axis=1, dtype=jnp.uint32)
  counts = lax.population_count(words).astype(jnp.int32)
  through = jnp.cumsum(counts)  # set bits in words 0..w
  k = jnp.arange(size, dtype=jnp.int32)
  last = words.shape[0] - 1
  w = _lower_bound(jnp, through, jnp.zeros_like(k), jnp.full_like(k, last + 1), k + 1,
                   (last + 1).bit_length())  # the word of slot k
  wc = jnp.minimum(w, last)
  rank = k - (through[wc] - counts[wc])  # slot k is this set bit of its word (from 0)
  word, bit = words[wc], jnp.zeros_like(k)
  for step in (16, 8, 4, 2, 1):
    below = lax.population_count(word & ((jnp.uint32(1) << (bit + step).astype(jnp.uint32))
                                         - jnp.uint32(1))).astype(jnp.int32)
    bit = jnp.where(below <= rank, bit + step, bit)
  return jnp.where(w <= last, wc * 32 + bit, n)


def _gather(jnp, x, index, fill):
  return x.at[index].get(mode='fill', fill_value=fill)


def _through_buffer(jax, jnp, size: int, finish, left, lanes: tuple, fills: tuple, results):
  """`results` (a tuple of (n,) arrays) with every `left` lane's entries replaced by
  `finish(*lanes)` of it, computed `size` lanes at a time (padding lanes get `fills`)."""
  if size >= left.shape[0]:
    done = finish(*lanes)
    return tuple(jnp.where(left, d, r) for d, r in zip(done, results))

  def one_buffer(carry):
    left, results = carry
    index = _compact(jnp, jax.lax, left, size)
    done = finish(*(_gather(jnp, x, index, f) for x, f in zip(lanes, fills)))
    results = tuple(r.at[index].set(d, mode='drop') for r, d in zip(results, done))
    return left.at[index].set(False, mode='drop'), results

  return jax.lax.while_loop(lambda c: jnp.any(c[0]), one_buffer, (left, results))[1]


def device_permute(spec: EpochSpec, keys, g, max_buffer: int | None = None):
  """`host_permute` of g with jax.numpy."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  m = spec.num_examples

  def walk(x):
    step = lambda x: jnp.where(x >= m, feistel(jnp, spec, keys, x), x)
    return (jax.lax.while_loop(lambda x: jnp.any(x >= m), step, x),)

  x = feistel(jnp, spec, keys, g.astype(jnp.uint32))
  for _ in range(PERMUTE_PASSES_FOR_ALL - 1):
    x = jnp.where(x >= m, feistel(jnp, spec, keys, x), x)
  left = 1 - m / 2**spec.perm_bits  # of [0, 2^w) outside [0, M): each pass leaves that share
  size = buffer_size(x.shape[0], left**PERMUTE_PASSES_FOR_ALL)
  size = size if max_buffer is None else min(size, max_buffer)
  return _through_buffer(jax, jnp, size, walk, x >= m, (x,), (0,), (x,))[0]


def device_negatives(spec: EpochSpec, arrays, keys, users, t, done,
                     max_buffer: int | None = None):
  """Negative items of the lanes not `done`, as `host_negatives` draws them (0 elsewhere)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def draw(users, t, done):
    """Every round for every lane not done, then the fallback where some lane needs it.
    Starting again from the first round is exact: a lane left has rejected the first word."""
    def one_round(carry):  # word r of the lanes: word r % 2 of counter pair (t, r // 2)
      r, items, done = carry
      words = candidate_words(jnp, keys, t, r // 2)
      item, ok = candidate(jnp, spec, arrays, users, jnp.where(r % 2 == 0, *words))
      return r + 1, jnp.where(ok & ~done, item, items), done | ok

    _, items, done = jax.lax.while_loop(
        lambda c: (c[0] < NEGATIVE_ROUNDS // 2 * 2) & ~jnp.all(c[2]), one_round,
        (jnp.uint32(0), jnp.zeros(t.shape, jnp.int32), done))
    return (jax.lax.cond(
        jnp.all(done), lambda: items,
        lambda: jnp.where(done, items, rank_select(jnp, spec, arrays, users, keys, t))),)

  items = jnp.zeros(t.shape, jnp.int32)
  if NEGATIVE_ROUNDS // 2:  # the first candidate of every lane, which almost every lane takes
    item, ok = candidate(jnp, spec, arrays, users, candidate_words(jnp, keys, t, 0)[0])
    items, done = jnp.where(ok & ~done, item, items), done | ok
  size = buffer_size(t.shape[0], spec.num_negatives / (1 + spec.num_negatives)
                     * spec.first_reject_rate)
  size = size if max_buffer is None else min(size, max_buffer)
  return _through_buffer(jax, jnp, size, draw, ~done, (users, t, done), (0, 0, True),
                         (items,))[0]


def device_examples(spec: EpochSpec, arrays, keys, g, max_buffer: int | None = None):
  """`host_examples` of the same indices (any, clamped to < M), computed with jax.numpy.
  `max_buffer` caps the buffers of lanes left (for tests: any cap gives the same integers)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  s = device_permute(spec, keys, g, max_buffer)
  positive = s < spec.num_positives
  t = s - jnp.uint32(spec.num_positives)
  j = jnp.where(positive, s, t // jnp.uint32(spec.num_negatives))
  users = arrays['pos_users'][j]
  t = jnp.where(positive, jnp.uint32(0), t)
  drawn = device_negatives(spec, arrays, keys, users, t, positive, max_buffer)
  items = jnp.where(positive, arrays['pos_items'][jnp.where(positive, j, 0)], drawn)
  return users, items, positive.astype(jnp.float32)
