"""MLPerf v0.5's recommendation benchmark: NeuMF on ML-20M, trained until test HR@10 reaches
0.635 against 999 sampled negatives.

Model and task (MLPerf's reference, mlcommons/training `recommendation/pytorch`): NeuMF with
64 predictive factors and MLP layers (256, 256, 128, 64), whose first width is the user and
item MLP embeddings concatenated (128 each, `neumf.py`: `mlp_layer_sizes[0] // 2`), as in
ncf-jax; 4 negatives per positive; HR@10 against 999 negatives; the target is checked with
`>=` after each training epoch, not on the untrained model (`ncf.py` at commit 05bea0e).

Hyperparameters: one source, NVIDIA's v0.5 submission (mlcommons/training_results_v0.5,
`v0.5.0/nvidia/submission/code/recommendation/pytorch/run_and_time.sh`, listed again in that
folder's README.md "Hyperparameters used"): batch 1,048,576, learning rate 0.0045, Adam
β1 0.25, β2 0.5, eps 1e-8, `--threshold 0.635`. The script sets no learning-rate schedule
(constant here) and no epoch count (20 here, the reference's `-e` default). Not taken: its
fp16 training with loss scale 8192 (ncf-jax trains in float32) and its seed (`$RANDOM`).

The batch stays at the published 1,048,576 on any machine, on purpose. The β's and the rate
were tuned for it, and a smaller batch voids that tuning. An epoch's arithmetic (about 99M
examples, 6e13 floating-point operations with the backward pass) does not depend on the
batch size: a CPU is slow at it at any batch, and the large batch is, if anything, the
cheapest there, since dense Adam touches every table row once per step. What the batch
costs is memory: XLA's memory analysis of the compiled step gives 6.0 GiB of temporaries at
ML-20M's size (138,493 users, 26,744 items), small enough for this project's 24 GiB CPU
machine, so nothing has to be scaled down (not run end to end there: ML-20M cannot be
downloaded on it). Where memory is short, lower `batch_size` and scale `learning_rate` by
sqrt(batch_size / 1,048,576) (the square-root rule for Adam). That is a starting point,
untested here: check that the target is still reached.

Data: `ml-20m-mlperf`, ML-20M's `ratings.csv` prepared with `--preset=mlperf` (every rating a
positive, users with >= 20 ratings, each user's latest held out, 999 test negatives).
Evaluation ranks 138,493 users x 1,000 candidates. At 512 users per block the evaluator's
temporaries are 1.1 GiB; at the default 2,048 they are 4.4 GiB. Runs stop at
`target_hr`: the record of the epoch that reaches it carries `seconds_to_target`.
"""

from ncf_jax.configs import neumf


def get_config():
  config = neumf.get_config()
  config.dataset = 'ml-20m-mlperf'
  config.num_factors = 64
  config.layers = (256, 256, 128, 64)
  config.num_negatives = 4
  config.batch_size = 1048576
  config.learning_rate = 0.0045
  config.adam_b1 = 0.25
  config.adam_b2 = 0.5
  config.adam_eps = 1e-8
  config.num_epochs = 20
  config.steps_per_dispatch = 4  # ~95 steps per epoch; a chunk of 4 is 64 MB of ids and labels
  config.eval_users_per_block = 512  # x 1,000 candidates: 1.1 GiB of evaluator temporaries
  config.top_k = 10
  config.target_hr = 0.635
  return config
