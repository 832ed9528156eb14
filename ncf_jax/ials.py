"""iALS as in Rendle, Krichene, Zhang and Koren, "Revisiting the Performance of iALS on Item
Recommendation Benchmarks" (RecSys 2022; arXiv 2110.14037).

Loss over user embeddings W (U, d) and item embeddings H (I, d), ŷ(u, i) = <w_u, h_i>:

  L = Σ_{(u,i) observed} (ŷ(u,i) - 1)²  +  α0 Σ_u Σ_i ŷ(u,i)²
      + λ Σ_u (|I_u| + α0 |I|)^ν ||w_u||²  +  λ Σ_i (|U_i| + α0 |U|)^ν ||h_i||²

(α0: the weight of every unobserved pair; ν: the frequency scaling of the regularisation,
ν = 1 in their tuned runs). With H fixed, user u's optimum solves the d x d system

  (Σ_{i∈I_u} h_i h_iᵀ + α0 G + λ_u I) w_u = Σ_{i∈I_u} h_i,   G = HᵀH (the Gramian trick),

and symmetrically for items. Here all users (then all items) are solved at once by
conjugate gradients (Takács, Pilászy and Tikk, RecSys 2011), warm-started from the previous
embeddings: a matrix-vector product needs only the observed pairs (gathered and
segment-summed in fixed-size blocks of pairs, a `lax.scan`) and G, so nothing of size
users x d x d is formed, shapes are fixed, and it is one jitted function. When the
interaction matrix is small enough to hold densely (`DENSE_LIMIT` entries; ML-1M's 22M are),
the observed term is two matmuls, ((V Hᵀ) ⊙ X) H, instead: on a CPU, XLA's scatter-add
(segment_sum) is the bottleneck of the blocked form (measured on ML-1M at d = 192, one
matrix-vector product: 10 s blocked, 1.5-2.5 s dense, on the shared 2-core machine). With `cg_steps`
= d the solve is exact (in exact arithmetic); fewer steps per sweep, warm-started, converge
over epochs to the same fixed point.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np


DENSE_LIMIT = 2**26  # rows x cols at most this: the observed term as dense matmuls


@dataclasses.dataclass(frozen=True)
class Settings:
  unobserved_weight: float  # α0
  regularization: float  # λ
  regularization_exponent: float = 1.0  # ν
  cg_steps: int = 8
  block: int = 65536  # observed pairs per scan step


@dataclasses.dataclass(frozen=True)
class Pairs:
  """Observed pairs, padded to a multiple of the block with weight-0 pairs, as
  (blocks, block) arrays: `rows` index the side being solved, `cols` the fixed side; and,
  when small enough, the same pairs as a dense 0/1 matrix (rows, cols)."""
  rows: jax.Array
  cols: jax.Array
  weight: jax.Array
  counts: jax.Array  # (num_rows,) observed pairs per row
  dense: jax.Array | None = None

  @classmethod
  def build(cls, rows: np.ndarray, cols: np.ndarray, num_rows: int, block: int,
            num_cols: int = 0, dense_limit: int = DENSE_LIMIT) -> 'Pairs':
    block = max(1, min(block, len(rows)))
    pad = -len(rows) % block
    shape = (-1, block)
    fill = lambda a: np.concatenate([a, np.zeros(pad, a.dtype)]).reshape(shape)
    weight = np.concatenate([np.ones(len(rows), np.float32), np.zeros(pad, np.float32)])
    dense = None
    if num_cols and num_rows * num_cols <= dense_limit:
      dense = np.zeros((num_rows, num_cols), np.float32)
      dense[rows, cols] = 1.0
      dense = jnp.asarray(dense)
    return cls(jnp.asarray(fill(rows.astype(np.int32))), jnp.asarray(fill(cols.astype(np.int32))),
               jnp.asarray(weight.reshape(shape)),
               jnp.asarray(np.bincount(rows, minlength=num_rows).astype(np.float32)), dense)


jax.tree_util.register_dataclass(Pairs, data_fields=['rows', 'cols', 'weight', 'counts', 'dense'],
                                 meta_fields=[])


def _observed_products(pairs: Pairs, fixed: jax.Array, vectors: jax.Array) -> jax.Array:
  """(N, d): Σ_{j∈S_n} y_j (y_j · v_n) for each row n, block by block of pairs."""
  if pairs.dense is not None:
    return ((vectors @ fixed.T) * pairs.dense) @ fixed
  def add_block(total, block):
    rows, cols, weight = block
    y = jnp.take(fixed, cols, axis=0)
    dots = jnp.sum(y * jnp.take(vectors, rows, axis=0), axis=-1) * weight
    return total + jax.ops.segment_sum(dots[:, None] * y, rows, vectors.shape[0]), None
  total, _ = lax.scan(add_block, jnp.zeros_like(vectors), (pairs.rows, pairs.cols, pairs.weight))
  return total


def _observed_sums(pairs: Pairs, fixed: jax.Array, num_rows: int) -> jax.Array:
  """(N, d): Σ_{j∈S_n} y_j (the right-hand sides: every observed target is 1)."""
  if pairs.dense is not None:
    return pairs.dense @ fixed
  def add_block(total, block):
    rows, cols, weight = block
    y = jnp.take(fixed, cols, axis=0) * weight[:, None]
    return total + jax.ops.segment_sum(y, rows, num_rows), None
  zeros = jnp.zeros((num_rows, fixed.shape[1]), fixed.dtype)
  return lax.scan(add_block, zeros, (pairs.rows, pairs.cols, pairs.weight))[0]


def row_regularization(counts: jax.Array, num_other: int, settings: Settings) -> jax.Array:
  """λ (|S_n| + α0 · num_other)^ν for each row."""
  return settings.regularization * (counts + settings.unobserved_weight * num_other
                                    ) ** settings.regularization_exponent


def solve_side(pairs: Pairs, fixed: jax.Array, start: jax.Array, settings: Settings) -> jax.Array:
  """New rows (N, d) given the other side `fixed` (M, d): `cg_steps` conjugate-gradient
  steps on every row's normal equations at once, from `start`."""
  gram = fixed.T @ fixed
  reg = row_regularization(pairs.counts, fixed.shape[0], settings)[:, None]

  def matvec(v):
    return (_observed_products(pairs, fixed, v) + settings.unobserved_weight * (v @ gram)
            + reg * v)

  rhs = _observed_sums(pairs, fixed, start.shape[0])
  residual = rhs - matvec(start)
  row_dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  safe_div = lambda a, b: jnp.where(b > 0, a / jnp.where(b > 0, b, 1.0), 0.0)

  def step(_, carry):
    x, r, p, rr = carry
    ap = matvec(p)
    alpha = safe_div(rr, row_dot(p, ap))
    x, r = x + alpha * p, r - alpha * ap
    rr_new = row_dot(r, r)
    return x, r, r + safe_div(rr_new, rr) * p, rr_new

  rr = row_dot(residual, residual)
  return lax.fori_loop(0, settings.cg_steps, step, (start, residual, residual, rr))[0]


def loss(users: Pairs, user_emb: jax.Array, item_emb: jax.Array, item_counts: jax.Array,
         settings: Settings) -> jax.Array:
  """The iALS objective L above (`users`: the observed pairs by user)."""
  def add_block(total, block):
    rows, cols, weight = block
    pred = jnp.sum(jnp.take(user_emb, rows, axis=0) * jnp.take(item_emb, cols, axis=0), -1)
    return total + jnp.sum(weight * (pred - 1.0) ** 2), None
  if users.dense is not None:
    observed = jnp.sum(users.dense * (user_emb @ item_emb.T - 1.0) ** 2)
  else:
    observed = lax.scan(add_block, jnp.zeros(()), (users.rows, users.cols, users.weight))[0]
  unobserved = jnp.sum((user_emb.T @ user_emb) * (item_emb.T @ item_emb))
  reg_u = row_regularization(users.counts, item_emb.shape[0], settings)
  reg_i = row_regularization(item_counts, user_emb.shape[0], settings)
  penalty = (jnp.sum(reg_u * jnp.sum(user_emb ** 2, -1))
             + jnp.sum(reg_i * jnp.sum(item_emb ** 2, -1)))
  return observed + settings.unobserved_weight * unobserved + penalty


@functools.partial(jax.jit, static_argnames='settings')
def sweep(by_user: Pairs, by_item: Pairs, user_emb: jax.Array, item_emb: jax.Array,
          settings: Settings) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One iALS epoch: users given items, then items given users; and the loss after it."""
  user_emb = solve_side(by_user, item_emb, user_emb, settings)
  item_emb = solve_side(by_item, user_emb, item_emb, settings)
  return user_emb, item_emb, loss(by_user, user_emb, item_emb, by_item.counts, settings)
