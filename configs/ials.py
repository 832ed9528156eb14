"""iALS (Rendle et al., "Revisiting the Performance of iALS on Item Recommendation
Benchmarks", RecSys 2022): 192 dimensions, unobserved weight α0, regularisation
λ·(|I_u| + α0·|I|)^ν with ν = 1, embeddings N(0, 0.1²/d); fit by alternating least squares
(`ncf_jax/als_fit.py`, `ncf_jax/ials.py`), one epoch = one sweep over users then items.
α0 and λ here are the ones chosen on the validation holdout by
`python -m experiments.reproduce --experiment=baselines` (experiments/results/baselines.md).
"""

from ncf_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = 'ials'
  config.num_factors = 192
  config.embedding_stddev = 0.1
  config.unobserved_weight = 0.3  # α0
  config.regularization = 0.007  # λ
  config.regularization_exponent = 1.0  # ν
  config.cg_steps = 4  # conjugate-gradient steps per side per epoch, warm-started
  config.num_epochs = 8
  config.optimizer = 'sgd'  # unused (nothing is a gradient step); keeps the state's layout
  config.eval_users_per_block = 512
  return config
