"""MLP with 3 hidden layers (64 -> 32 -> 16 -> 8 at 8 factors), the paper's settings."""

from ncf_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = 'mlp'
  return config
