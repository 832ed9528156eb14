"""Dot-product matrix factorisation as tuned by Rendle et al. (RecSys 2020) for this protocol.

Their `mf_simple.py`: logit = <p_u, q_i> + b_u + b_i + b; embeddings N(0, 0.1²); 8 uniform
negatives per positive (positives not rejected); per-example SGD at 0.002 with weight decay
0.005 on the rows each example touches; 256 epochs, final epoch reported. Here the same
updates run in mini-batches: the loss is a batch mean, so the step is 0.002·batch_size, and
`l2_embeddings` = 0.005 / 2 because it multiplies Σw² rather than ½Σw². Their best ML-1M
figure (HR@10 0.7294, NDCG@10 0.4523) is at embedding dimension 192, one dimension of which
holds a bias; `num_factors` counts the dot-product dimensions only.
"""

from ncf_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = 'mf'
  config.num_factors = 192
  config.embedding_stddev = 0.1
  config.num_negatives = 8
  config.reject_positives = False
  config.optimizer = 'lazy_sgd'
  config.batch_size = 1024
  config.learning_rate = 0.002 * config.batch_size
  config.l2_embeddings = 0.005 / 2
  config.l2_embeddings_per_example = True
  config.num_epochs = 256
  config.steps_per_dispatch = 64
  return config
