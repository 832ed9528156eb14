"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

Item-item weights B minimising ||X - XB||² + λ||B||² subject to diag(B) = 0 have the
closed form
  P = (XᵀX + λI)⁻¹,   B = I - P · diagMat(1 / diag(P))   (so B_ij = -P_ij / P_jj, B_jj = 0),
and a user's scores are X_u B. λ is chosen on validation (`configs/ease.py`).
"""

import jax
import jax.numpy as jnp
import numpy as np


def interaction_matrix(users: np.ndarray, items: np.ndarray, num_users: int,
                       num_items: int) -> np.ndarray:
  """Binary X (users, items) from observed pairs."""
  x = np.zeros((num_users, num_items), np.float32)
  x[users, items] = 1.0
  return x


@jax.jit
def item_weights(x: jax.Array, regularization: jax.Array) -> jax.Array:
  """EASE's B (items, items) for the binary matrix `x` (users, items)."""
  gram = x.T @ x + regularization * jnp.eye(x.shape[1], dtype=x.dtype)
  p = jnp.linalg.inv(gram)
  b = -p / jnp.diag(p)[None, :]
  return b.at[jnp.diag_indices(x.shape[1])].set(0.0)
