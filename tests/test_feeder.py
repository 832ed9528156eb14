"""The host-side negative-sampling feeder."""

import numpy as np
import pytest

from ncf_jax import feeder
from ncf_jax.data import synthetic


@pytest.fixture(scope='module')
def dataset():
  return synthetic.generate(num_users=200, num_items=90, interactions_per_user=25,
                            num_test_negatives=20, seed=3)


def _pairs(users, items):
  return set(zip(users.tolist(), items.tolist()))


def test_epoch_counts_labels_and_padding(dataset):
  n_neg, batch = 4, 128
  b = feeder.epoch_batches(dataset, n_neg, batch, seed=0, epoch=1)
  total = dataset.num_train * (1 + n_neg)
  assert b.num_examples == total
  assert b.users.shape == b.items.shape == b.labels.shape == b.weights.shape
  assert b.users.shape == (-(-total // batch), batch)
  assert b.users.dtype == b.items.dtype == np.int32
  assert b.labels.dtype == b.weights.dtype == np.float32
  real = b.weights.ravel() == 1
  assert real.sum() == total and (b.weights.ravel()[~real] == 0).all()
  assert b.labels.ravel()[real].sum() == dataset.num_train  # exactly a fifth positive
  # Every training positive appears exactly once, with label 1.
  pos = b.labels.ravel() == 1
  pos_pairs = list(zip(b.users.ravel()[pos].tolist(), b.items.ravel()[pos].tolist()))
  assert sorted(pos_pairs) == sorted(zip(dataset.train_users.tolist(),
                                         dataset.train_items.tolist()))


def test_rejection_mode_never_yields_a_training_positive(dataset):
  b = feeder.epoch_batches(dataset, 4, 64, seed=1, epoch=2)
  neg = (b.labels.ravel() == 0) & (b.weights.ravel() == 1)
  negatives = _pairs(b.users.ravel()[neg], b.items.ravel()[neg])
  assert not negatives & _pairs(dataset.train_users, dataset.train_items)


def test_uniform_mode_does_not_reject(dataset):
  b = feeder.epoch_batches(dataset, 4, 64, seed=1, epoch=2, reject_positives=False)
  neg = (b.labels.ravel() == 0) & (b.weights.ravel() == 1)
  hits = dataset.train_set.contains(b.users.ravel()[neg], b.items.ravel()[neg])
  # With ~27% density about a quarter of uniform negatives are training positives.
  assert 0.1 < hits.mean() < 0.5


def test_deterministic_in_seed_and_epoch(dataset):
  a = feeder.epoch_batches(dataset, 3, 100, seed=5, epoch=4)
  b = feeder.epoch_batches(dataset, 3, 100, seed=5, epoch=4)
  c = feeder.epoch_batches(dataset, 3, 100, seed=5, epoch=5)
  d = feeder.epoch_batches(dataset, 3, 100, seed=6, epoch=4)
  np.testing.assert_array_equal(a.items, b.items)
  np.testing.assert_array_equal(a.users, b.users)
  assert not np.array_equal(a.items, c.items)
  assert not np.array_equal(a.items, d.items)


def test_negatives_are_roughly_uniform_over_allowed_items(dataset):
  # One user's negatives over many epochs: chi-square-like check of flatness.
  user = int(np.argmax(np.bincount(dataset.train_users)))
  allowed = np.setdiff1d(np.arange(dataset.num_items),
                         dataset.train_items[dataset.train_users == user])
  counts = np.zeros(dataset.num_items)
  for epoch in range(40):
    b = feeder.epoch_batches(dataset, 4, 256, seed=0, epoch=epoch)
    sel = (b.users.ravel() == user) & (b.labels.ravel() == 0) & (b.weights.ravel() == 1)
    counts += np.bincount(b.items.ravel()[sel], minlength=dataset.num_items)
  assert counts[np.setdiff1d(np.arange(dataset.num_items), allowed)].sum() == 0
  expected = counts.sum() / len(allowed)
  chi2 = ((counts[allowed] - expected) ** 2 / expected).sum()
  dof = len(allowed) - 1
  assert chi2 < dof + 6 * np.sqrt(2 * dof)  # far beyond this means non-uniform


def test_batch_multiple_pads_whole_batches(dataset):
  b = feeder.epoch_batches(dataset, 4, 128, seed=0, epoch=1, batch_multiple=7)
  assert b.num_batches % 7 == 0
  assert b.num_batches == feeder.num_batches_per_epoch(dataset.num_train, 4, 128, 7)


def test_iterate_epochs_prefetch_matches_direct(dataset):
  got = list(feeder.iterate_epochs(dataset, 2, 64, seed=9, first_epoch=3, last_epoch=5))
  assert [e for e, _ in got] == [3, 4, 5]
  for epoch, batches in got:
    np.testing.assert_array_equal(batches.items,
                                  feeder.epoch_batches(dataset, 2, 64, 9, epoch).items)
