"""NeuMF tuned for wall-clock time to HR@10 >= 0.69 on ML-1M (above the paper's NeuMF-8, 0.688).

Chosen from short runs on ML-1M (test HR@10 per epoch; experiments/results/neumf_fast_tuning.md):
a wider GMF part (32 factors) with a small MLP tower (64 -> 32 -> 16) learns more per second
than the paper's (64, 32, 16, 8) tower, whose 64-wide first layer dominates the arithmetic;
8 negatives per positive reach 0.69 in fewer passes over the positives than 4; batch 4096 with
Adam at 8e-3 keeps the step count (dense Adam moves every embedding row each step) low. Dense
Adam, because on a CPU lazy Adam's scatters cost more than they save at this batch size (it
is slightly more accurate per epoch: see the tuning notes).
"""

from ncf_jax.configs import neumf


def get_config():
  config = neumf.get_config()
  config.num_factors = 32
  config.layers = (64, 32, 16)
  config.num_negatives = 8
  config.batch_size = 4096
  config.learning_rate = 0.008
  config.steps_per_dispatch = 8
  config.num_epochs = 6
  return config
