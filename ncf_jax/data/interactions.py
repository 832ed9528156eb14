"""Set membership of (user, item) pairs, queried for many pairs at once (data preparation and
evaluation negatives; training negatives use `ncf_jax/epoch.py`'s own structure)."""

import numpy as np

# Above this many (user, item) cells a sorted-key search replaces the bitmap
# (2**32 bits = 512 MiB; ML-20M needs 3.7e9 bits = 463 MiB).
_MAX_BITMAP_CELLS = 2**32


class InteractionSet:
  """Which (user, item) pairs are observed, queried for many pairs at once.

  A packed bitmap over all users x items when it fits (one random byte read per
  query), otherwise sorted `user * num_items + item` keys and `searchsorted`.
  """

  def __init__(self, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int):
    self.num_users = int(num_users)
    self.num_items = int(num_items)
    keys = users.astype(np.int64) * self.num_items + items.astype(np.int64)
    cells = self.num_users * self.num_items
    if cells <= _MAX_BITMAP_CELLS:
      keys = np.sort(keys)
      keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
      byte, first = np.unique(keys >> 3, return_index=True)
      self._bitmap = np.zeros((cells + 7) // 8, dtype=np.uint8)
      # Distinct keys set distinct bits of a byte, so their sum is their OR.
      self._bitmap[byte] = np.add.reduceat(np.left_shift(1, keys & 7), first).astype(np.uint8)
      self._keys = None
    else:
      self._bitmap = None
      self._keys = np.sort(keys)

  def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Boolean array: whether each (users[j], items[j]) is an observed pair."""
    keys = users.astype(np.int64) * self.num_items + items.astype(np.int64)
    if self._bitmap is not None:
      return ((self._bitmap[keys >> 3] >> (keys & 7).astype(np.uint8)) & 1).astype(bool)
    pos = np.searchsorted(self._keys, keys)
    pos = np.minimum(pos, len(self._keys) - 1)
    return self._keys[pos] == keys
