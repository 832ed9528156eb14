"""Fields shared by every ncf-jax configuration, with the original NCF code's defaults."""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # Data.
  c.dataset = 'ml-1m'  # ml-1m | pinterest-20 | ml-100k | ml-20m | ml-20m-mlperf | synthetic
  # Directory holding <dataset>.{train.rating,test.rating,test.negative};
  # unset: $NCF_DATA_DIR, else ~/.cache/ncf_jax/<dataset>.
  c.data_dir = config_dict.placeholder(str)
  # Carve a validation holdout (one more interaction per user) out of training
  # and select the best epoch on it instead of on test.
  c.validation = False
  c.synthetic = ml_collections.ConfigDict(dict(
      num_users=1000, num_items=500, interactions_per_user=40,
      num_clusters=8, popularity_exponent=1.0, num_test_negatives=99,
      seed=0))  # the data's own seed: runs of other `seed`s train on the same data

  # Model.
  c.model = 'neumf'  # gmf | mlp | neumf | mf
  c.num_factors = 8  # predictive factors: GMF width and last MLP layer
  # MLP tower widths; the first is the concatenated user+item embedding width.
  # Empty: (8f, 4f, 2f, f) for f = num_factors, the original's (64,32,16,8).
  c.layers = ()
  c.embedding_stddev = 0.01  # embeddings start N(0, stddev²), as in the original
  c.l2_embeddings = 0.0  # the original's reg_mf
  # False: λ·Σw² over the whole tables every step (the original's Keras regulariser);
  # True: λ·(Σ of the example's looked-up rows²) averaged over the batch like the loss
  # (per-example SGD with weight decay, Rendle et al.); lazy optimizers need True.
  c.l2_embeddings_per_example = False
  c.l2_layers = 0.0  # the original's reg_layers

  # Training.
  c.num_epochs = 20
  c.batch_size = 256
  c.num_negatives = 4
  # True: negatives are redrawn while they hit a training positive (original);
  # False: plain uniform items (Rendle et al.), cheaper.
  c.reject_positives = True
  # True: a user's held-out items (test, and validation when present) are never that
  # user's training negatives either; False: they may be drawn, as in the original.
  # Needs reject_positives (uniform negatives reject nothing).
  c.exclude_heldout_from_negatives = False
  # Which executor computes each epoch's batches (the same integers either way, see
  # ncf_jax/epoch.py): host (NumPy threads, prefetched) | device (inside the compiled step).
  c.sampler = 'host'
  c.optimizer = 'adam'  # adam | lazy_adam | sgd | lazy_sgd | adagrad | rmsprop
  c.learning_rate = 0.001
  c.learning_rate_schedule = 'constant'  # constant | cosine (to 0 at the last step)
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  c.steps_per_dispatch = 64  # batches per compiled call (one lax.fori_loop)
  c.seed = 0

  # Devices.
  c.num_devices = 0  # 0: every device that divides batch_size (all, usually)
  # replicated: tables copied on every device (data parallel); rows: each table's rows
  # split over the devices, ids routed to the rows' owners (ncf_jax/row_sharded.py); auto:
  # row-shard tables of >= 256 MiB, replicate the rest (ncf_jax/tables.py).
  c.embedding_sharding = 'replicated'
  c.compute_dtype = 'float32'  # float32 | bfloat16 (parameters and optimizer stay float32)

  # Evaluation.
  c.top_k = 10
  c.eval_users_per_block = 2048
  c.full_ranking = False  # also rank against all items (Krichene & Rendle)
  # Stop at the first trained epoch whose selection HR@top_k (validation if configured, else
  # test) reaches this, as MLPerf does; its record gets seconds_to_target. 0 = off.
  c.target_hr = 0.0
  c.log_every_seconds = 10.0  # progress line inside long epochs; 0 = off

  return c
