"""Host-side training examples: every positive plus freshly drawn negatives, each epoch.

An epoch holds each training positive once and `num_negatives` negatives per
positive, each drawn uniformly from the items that user has no training
interaction with (the original NCF code's rule), or, with `reject_positives`
off, uniformly from all items (Rendle et al.'s cheaper rule). With
`exclude_heldout`, the rejection also covers each user's held-out (test and
validation) items, so they never train as negatives. Examples are
shuffled and cut into fixed-shape batches; the ragged end is padded with
weight-0 examples, so every epoch has the same shapes and nothing recompiles.
Everything is a function of `(seed, epoch)`.
"""

import concurrent.futures
import dataclasses
from typing import Iterator

import numpy as np

from ncf_jax.data.dataset import Dataset
from ncf_jax.data.interactions import sample_negatives


@dataclasses.dataclass(frozen=True)
class EpochBatches:
  """One epoch of examples as (num_batches, batch_size) arrays."""
  users: np.ndarray  # int32
  items: np.ndarray  # int32
  labels: np.ndarray  # float32, 1 for positives
  weights: np.ndarray  # float32, 0 for padding
  num_examples: int  # real (unpadded) examples

  @property
  def num_batches(self) -> int:
    return self.users.shape[0]

  def chunk(self, start: int, size: int) -> dict[str, np.ndarray]:
    """Batches [start, start + size) as a dict of (size, batch_size) arrays."""
    end = start + size
    return dict(users=self.users[start:end], items=self.items[start:end],
                labels=self.labels[start:end], weights=self.weights[start:end])


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
  return np.random.default_rng([seed, epoch])


def epoch_examples(dataset: Dataset, num_negatives: int, rng: np.random.Generator,
                   reject_positives: bool = True, exclude_heldout: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Unshuffled (users, items, labels): positives first, then their negatives."""
  neg_users = np.repeat(dataset.train_users, num_negatives)
  if exclude_heldout and not reject_positives:  # config_checks refuses this combination
    raise ValueError('exclude_heldout needs reject_positives')
  observed = None
  if reject_positives:
    observed = dataset.train_and_heldout_set if exclude_heldout else dataset.train_set
  neg_items = sample_negatives(rng, neg_users, observed, dataset.num_items)
  users = np.concatenate([dataset.train_users, neg_users])
  items = np.concatenate([dataset.train_items, neg_items])
  labels = np.zeros(len(users), dtype=np.float32)
  labels[:dataset.num_train] = 1.0
  return users, items, labels


def num_batches_per_epoch(num_train: int, num_negatives: int, batch_size: int,
                          batch_multiple: int = 1) -> int:
  """Batches in an epoch, rounded up to a multiple of `batch_multiple`."""
  batches = -(-num_train * (1 + num_negatives) // batch_size)
  return -(-batches // batch_multiple) * batch_multiple


def epoch_batches(dataset: Dataset, num_negatives: int, batch_size: int, seed: int, epoch: int,
                  reject_positives: bool = True, batch_multiple: int = 1,
                  exclude_heldout: bool = False) -> EpochBatches:
  """The shuffled, padded batches of epoch `epoch` (deterministic in seed and epoch)."""
  rng = epoch_rng(seed, epoch)
  users, items, labels = epoch_examples(dataset, num_negatives, rng, reject_positives,
                                        exclude_heldout)
  n = len(users)
  num_batches = num_batches_per_epoch(dataset.num_train, num_negatives, batch_size,
                                      batch_multiple)
  order = rng.permutation(n)
  size = num_batches * batch_size

  def padded(values: np.ndarray, dtype) -> np.ndarray:
    out = np.zeros(size, dtype=dtype)
    np.take(values, order, out=out[:n])
    return out.reshape(num_batches, batch_size)

  weights = np.zeros(size, dtype=np.float32)
  weights[:n] = 1.0
  return EpochBatches(users=padded(users, np.int32), items=padded(items, np.int32),
                      labels=padded(labels, np.float32),
                      weights=weights.reshape(num_batches, batch_size), num_examples=n)


def iterate_epochs(dataset: Dataset, num_negatives: int, batch_size: int, seed: int,
                   first_epoch: int, last_epoch: int, reject_positives: bool = True,
                   batch_multiple: int = 1, exclude_heldout: bool = False
                   ) -> Iterator[tuple[int, EpochBatches]]:
  """Yields (epoch, batches) for first_epoch..last_epoch, preparing the next one
  on a background thread (NumPy releases the GIL) while the caller trains."""
  make = lambda e: epoch_batches(dataset, num_negatives, batch_size, seed, e,
                                 reject_positives, batch_multiple, exclude_heldout)
  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    upcoming = pool.submit(make, first_epoch) if first_epoch <= last_epoch else None
    for epoch in range(first_epoch, last_epoch + 1):
      batches = upcoming.result()
      upcoming = pool.submit(make, epoch + 1) if epoch < last_epoch else None
      yield epoch, batches
