"""GMF with the paper's settings."""

from ncf_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = 'gmf'
  return config
