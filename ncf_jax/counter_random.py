"""Counter-based random numbers in plain uint32 arithmetic, for NumPy and jax.numpy alike.

Every function takes the array namespace `xp` (`numpy` or `jax.numpy`) and uses only
uint32 addition, xor, shifts, multiplication and remainder, which wrap identically in
both; so the host and the device compute the same integers from the same counters.

- `threefry2x32`: Threefry-2x32 with 20 rounds (Salmon et al., SC'11), the generator behind
  `jax.random`'s default keys; equal bit for bit to `jax.extend.random.threefry_2x32`.
- `mix32`: a keyed 32-bit mixer (MurmurHash3's finaliser), the cheap round function of the
  Feistel permutation in `epoch.py`; its keys come from Threefry.
"""

import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def _u32(xp, value: int):
  return xp.uint32(value & 0xFFFFFFFF)


def _rotl(xp, x, r: int):
  return (x << _u32(xp, r)) | (x >> _u32(xp, 32 - r))


def key_words(xp, key):
  """A key word as a uint32 array that broadcasts against counters: a Python int becomes a
  (1,) array (NumPy warns on overflowing uint32 scalars, never on arrays); an array (a traced
  key inside jit) is kept."""
  if isinstance(key, int):
    return xp.asarray([key & 0xFFFFFFFF], dtype=xp.uint32)
  return key.astype(xp.uint32)


def threefry2x32(xp, key, c0, c1):
  """(x0, x1) = Threefry-2x32-20 of the counters (c0, c1) under `key`, a pair of uint32 words
  (Python ints, or arrays from `key_words`)."""
  k0, k1 = key_words(xp, key[0]), key_words(xp, key[1])
  ks = (k0, k1, k0 ^ k1 ^ _u32(xp, _PARITY))
  x0 = c0.astype(xp.uint32) + ks[0]
  x1 = c1.astype(xp.uint32) + ks[1]
  for group in range(5):
    for r in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = _rotl(xp, x1, r) ^ x0
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + _u32(xp, group + 1)
  return x0, x1


def threefry2x32_scalar(key: tuple[int, int], c0: int, c1: int) -> tuple[int, int]:
  """Threefry of one counter pair, as Python ints (for deriving keys)."""
  x0, x1 = threefry2x32(np, key, np.array([c0], np.uint32), np.array([c1], np.uint32))
  return int(x0[0]), int(x1[0])


def mix32(xp, x, key):
  """A keyed scramble of uint32 values (MurmurHash3's fmix32 of x ^ key)."""
  h = x ^ key_words(xp, key)
  h = h ^ (h >> _u32(xp, 16))
  h = h * _u32(xp, 0x85EBCA6B)
  h = h ^ (h >> _u32(xp, 13))
  h = h * _u32(xp, 0xC2B2AE35)
  return h ^ (h >> _u32(xp, 16))
