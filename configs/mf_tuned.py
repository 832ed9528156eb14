"""The best model this project ships: configs/mf.py (Rendle et al.'s MF, 192 factors) with
SGD at 0.003 per example instead of 0.002, chosen on a validation holdout.

Rendle et al. tuned their step, weight decay and negatives at 16 factors; at 192 factors and
256 epochs a larger step reaches a higher validation HR@10 (experiments/results/mf_tuning.md
lists the candidates and their validation and test figures). Reproduce with
`python -m experiments.reproduce --experiment=best --data_dir=DIR/ml-1m`.
"""

from configs import mf


def get_config():
  config = mf.get_config()
  config.learning_rate = 0.003 * config.batch_size
  return config
