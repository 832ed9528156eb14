"""Tiny NeuMF on synthetic data: a smoke run of seconds on a CPU."""

from ncf_jax.configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'synthetic'
  config.synthetic.num_users = 120
  config.synthetic.num_items = 80
  config.synthetic.interactions_per_user = 15
  config.synthetic.num_test_negatives = 30
  config.layers = (16, 8)  # one hidden layer: a smaller state and smaller programs
  config.num_epochs = 2
  config.batch_size = 128
  config.steps_per_dispatch = 4
  config.eval_users_per_block = 64
  config.log_every_seconds = 0.0
  return config
