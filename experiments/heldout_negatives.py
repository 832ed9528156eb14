"""How often a user's held-out test item is drawn as one of their training negatives.

  python -m experiments.heldout_negatives --data_dir=DIR/ml-1m [--num_negatives=4]

This is what `--config.exclude_heldout_from_negatives` prevents. With the original rule
(redraw while the item is a training positive), a negative of user u is uniform over the
num_items - n_u items u has not trained on, the test item among them. So each of u's
num_negatives * n_u draws per epoch hits it with probability 1 / (num_items - n_u).
Prints that expectation per user per epoch and over the whole epoch, then counts the hits
in one real epoch of the epoch definition (seed 0, epoch 1) as a check.
"""

from absl import flags
import numpy as np

from ncf_jax import cli
from ncf_jax import epoch
from ncf_jax import train
from ncf_jax.data.dataset import load_ncf_dir, ncf_name_in

flags.DEFINE_string('data_dir', None, 'Directory of NCF files (e.g. the NCF split of ML-1M).',
                    required=True)
flags.DEFINE_integer('num_negatives', 4, 'Training negatives per positive.')
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
  del argv
  dataset = load_ncf_dir(FLAGS.data_dir, ncf_name_in(FLAGS.data_dir))
  k = FLAGS.num_negatives
  n_u = np.bincount(dataset.train_users, minlength=dataset.num_users).astype(float)
  expected = k * n_u / (dataset.num_items - n_u)
  print(f'{dataset.num_users} users, {dataset.num_items} items, {n_u.mean():.1f} training '
        f'items per user on average, {k} negatives per positive')
  print(f'expected hits of the test item per user per epoch: {expected.mean():.3f} '
        f'(median {np.median(expected):.3f}); {expected.sum():.0f} of {k * dataset.num_train} '
        'negatives per epoch')
  spec, arrays = train.epoch_definition(dataset, k, reject_positives=True, exclude_heldout=False)
  users, items, labels = epoch.host_examples(spec, arrays, epoch.epoch_keys(0, 1),
                                             np.arange(spec.num_examples))
  test_item = np.full(dataset.num_users, -1)
  test_item[dataset.test.users] = dataset.test.items
  negative = labels == 0
  hits = int((items[negative] == test_item[users[negative]]).sum())
  print(f'measured in one epoch (seed 0, epoch 1): {hits} hits, '
        f'{hits / dataset.num_users:.3f} per user')


if __name__ == '__main__':
  cli.run(main)
