"""EASE (Steck, WWW 2019): B = I - P·diagMat(1/diag(P)), P = (XᵀX + λI)⁻¹, diag(B) = 0; a
user's scores are X_u B. Closed form (`ncf_jax/ease.py`): one epoch, deterministic. λ is the
one chosen on the validation holdout by `python -m experiments.reproduce
--experiment=baselines` (experiments/results/baselines.md).
"""

from ncf_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = 'ease'
  config.regularization = 1000.0  # λ: the largest of the grid (a wider one may pick more)
  config.num_epochs = 1
  config.optimizer = 'sgd'  # unused (nothing is a gradient step); keeps the state's layout
  # A user's row has one entry per item: small blocks keep sampled evaluation's gathers small.
  config.eval_users_per_block = 64
  return config
