"""The epoch definition: counter-based generator, keyed permutation, exact negatives."""

import jax
import jax.extend.random as jax_random
import jax.numpy as jnp
import numpy as np
import pytest

from ncf_jax import counter_random as cr
from ncf_jax import epoch as ep
from ncf_jax.data import synthetic


def test_threefry_known_answer_and_jax_random():
  # Random123's known-answer vector for Threefry-2x32-20 (kat_vectors).
  assert cr.threefry2x32_scalar((0x13198A2E, 0x03707344), 0x243F6A88, 0x85A308D3) == (
      0xC4923A9C, 0x483DF7A0)
  rng = np.random.default_rng(0)
  for _ in range(3):
    key = [int(k) for k in rng.integers(0, 2**32, 2)]
    c0, c1 = (rng.integers(0, 2**32, 500).astype(np.uint32) for _ in range(2))
    reference = np.asarray(jax_random.threefry_2x32(jnp.asarray(key, jnp.uint32),
                                                    jnp.concatenate([c0, c1])))
    host = np.concatenate(cr.threefry2x32(np, key, c0, c1))
    device = np.concatenate(jax.jit(lambda a, b, k: cr.threefry2x32(jnp, (k[0:1], k[1:2]), a, b))(
        c0, c1, jnp.asarray(key, jnp.uint32)))
    np.testing.assert_array_equal(host, reference)
    np.testing.assert_array_equal(device, reference)


def test_mix32_matches_plain_integer_arithmetic():
  def fmix(x, key):
    h = x ^ key
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)

  x = np.random.default_rng(1).integers(0, 2**32, 300).astype(np.uint32)
  expected = [fmix(int(v), 12345) for v in x]
  assert cr.mix32(np, x, 12345).tolist() == expected
  assert np.asarray(jax.jit(lambda v: cr.mix32(jnp, v, 12345))(x)).tolist() == expected


@pytest.mark.parametrize('positives,k', [(1, 0), (1, 1), (3, 4), (77, 4), (1000, 3), (4096, 1)])
def test_permutation_is_a_bijection_keyed_by_seed_and_epoch(positives, k):
  spec = ep.EpochSpec(positives, 10, k, True, True, 1)
  g = np.arange(spec.num_examples)
  perms = [ep.host_permute(spec, ep.epoch_keys(seed, epoch), g)
           for seed, epoch in ((0, 1), (0, 1), (0, 2), (1, 1))]
  for p in perms:
    assert sorted(p.tolist()) == list(range(spec.num_examples))
  np.testing.assert_array_equal(perms[0], perms[1])
  if spec.num_examples >= 50:
    assert not np.array_equal(perms[0], perms[2]) and not np.array_equal(perms[0], perms[3])
    # A shuffle, not a shift: few indices stay in place and the order is broken up.
    assert (perms[0] == g).mean() < 0.1
    assert abs(np.corrcoef(perms[0], g)[0, 1]) < 0.2


@pytest.fixture(scope='module')
def dataset():
  return synthetic.generate(num_users=120, num_items=60, interactions_per_user=30,
                            num_test_negatives=20, seed=3)


def _arrays(dataset, k=4, reject=True, use_bitmap=True, heldout=False):
  users, items = dataset.train_users, dataset.train_items
  if heldout:
    users = np.concatenate([users, dataset.test.users])
    items = np.concatenate([items, dataset.test.items])
  return ep.build_arrays(dataset.train_users, dataset.train_items, users, items,
                         dataset.num_users, dataset.num_items, k, reject, use_bitmap)


def _known(dataset, heldout=False):
  pairs = set(zip(dataset.train_users.tolist(), dataset.train_items.tolist()))
  if heldout:
    pairs |= set(zip(dataset.test.users.tolist(), dataset.test.items.tolist()))
  return pairs


@pytest.mark.parametrize('use_bitmap', [True, False])
def test_membership_structures_answer_like_a_set(dataset, use_bitmap):
  spec, arrays = _arrays(dataset, use_bitmap=use_bitmap, heldout=True)
  assert spec.use_bitmap == use_bitmap
  users = np.repeat(np.arange(dataset.num_users), dataset.num_items).astype(np.int32)
  items = np.tile(np.arange(dataset.num_items), dataset.num_users).astype(np.int32)
  known = _known(dataset, heldout=True)
  expected = np.array([(u, i) in known for u, i in zip(users.tolist(), items.tolist())])
  np.testing.assert_array_equal(ep.contains(np, spec, arrays, users, items), expected)
  device = jax.jit(lambda a, u, i: ep.contains(jnp, spec, a, u, i))(arrays, users, items)
  np.testing.assert_array_equal(np.asarray(device), expected)


@pytest.mark.parametrize('use_bitmap,heldout', [(True, False), (False, False), (True, True)])
def test_epoch_holds_each_positive_once_and_no_known_negative(dataset, use_bitmap, heldout):
  spec, arrays = _arrays(dataset, use_bitmap=use_bitmap, heldout=heldout)
  users, items, labels = ep.host_examples(spec, arrays, ep.epoch_keys(0, 1),
                                          np.arange(spec.num_examples))
  positives = sorted(zip(users[labels == 1].tolist(), items[labels == 1].tolist()))
  assert positives == sorted(zip(dataset.train_users.tolist(), dataset.train_items.tolist()))
  neg = labels == 0
  assert not set(zip(users[neg].tolist(), items[neg].tolist())) & _known(dataset, heldout)
  # Each user gets k negatives per positive.
  np.testing.assert_array_equal(np.bincount(users[neg], minlength=dataset.num_users),
                                4 * np.bincount(dataset.train_users,
                                                minlength=dataset.num_users))


@pytest.mark.parametrize('use_bitmap', [True, False])
def test_host_and_device_compute_the_same_integers(dataset, use_bitmap):
  spec, arrays = _arrays(dataset, use_bitmap=use_bitmap)
  g = np.arange(spec.num_examples)
  keys = ep.epoch_keys(7, 3)
  host = ep.host_examples(spec, arrays, keys, g)
  device = jax.jit(lambda a, k, g: ep.device_examples(spec, a, k, g))(arrays, keys,
                                                                       g.astype(np.uint32))
  for h, d in zip(host, device):
    np.testing.assert_array_equal(h, np.asarray(d))


def _dense_dataset():
  """Users who know 80% of 25 items: rejection needs many rounds, the fallback is used."""
  rng = np.random.default_rng(5)
  users, items = [], []
  for u in range(30):
    known = np.sort(rng.choice(25, 20, replace=False))
    users += [u] * len(known)
    items += known.tolist()
  return np.array(users, np.int32), np.array(items, np.int32)


@pytest.mark.parametrize('rounds', [0, 2, ep.NEGATIVE_ROUNDS])
def test_fallback_is_exact_and_uniform(monkeypatch, rounds):
  monkeypatch.setattr(ep, 'NEGATIVE_ROUNDS', rounds)
  users, items = _dense_dataset()
  known = set(zip(users.tolist(), items.tolist()))
  allowed = {u: sorted(set(range(25)) - {i for v, i in known if v == u}) for u in range(30)}
  counts = np.zeros((30, 25))
  for use_bitmap in (True, False):
    spec, arrays = ep.build_arrays(users, items, users, items, 30, 25, 4, True, use_bitmap)
    device_examples = jax.jit(lambda a, k, g, spec=spec: ep.device_examples(spec, a, k, g))
    # The device against the host with one membership structure per value of `rounds` (one
    # program each): the bitmap at 0 and 8 rounds, the sorted lists at 2.
    on_device = use_bitmap == (rounds != 2)
    for epoch in range(40):
      keys = ep.epoch_keys(0, epoch)
      g = np.arange(spec.num_examples)
      u, i, label = ep.host_examples(spec, arrays, keys, g)
      if on_device and epoch < 2:
        device = device_examples(arrays, keys, g.astype(np.uint32))
        np.testing.assert_array_equal(np.asarray(device[1]), i)
      neg = label == 0
      assert not set(zip(u[neg].tolist(), i[neg].tolist())) & known
      np.add.at(counts, (u[neg], i[neg]), 1)
  # Per user, the draws are flat over the 5 allowed items (chi-square, 4 dof, loose bound).
  for user in range(30):
    observed = counts[user, allowed[user]]
    expected = observed.sum() / len(observed)
    chi2 = ((observed - expected)**2 / expected).sum()
    assert chi2 < 30, (user, observed)


def test_negatives_are_uniform_over_allowed_items_like_a_reference(dataset):
  # Pooled over users, the frequency of each item among negatives is compared with what
  # uniform draws over each user's allowed items give (computed from sets, not the code).
  spec, arrays = _arrays(dataset)
  known = _known(dataset)
  per_user_allowed = {u: [i for i in range(dataset.num_items) if (u, i) not in known]
                      for u in range(dataset.num_users)}
  counts = np.zeros(dataset.num_items)
  expected = np.zeros(dataset.num_items)
  for epoch in range(20):
    u, i, label = ep.host_examples(spec, arrays, ep.epoch_keys(1, epoch),
                                   np.arange(spec.num_examples))
    neg = label == 0
    counts += np.bincount(i[neg], minlength=dataset.num_items)
    for user, n in zip(*np.unique(u[neg], return_counts=True)):
      expected[per_user_allowed[int(user)]] += n / len(per_user_allowed[int(user)])
  chi2 = ((counts - expected)**2 / expected).sum()
  dof = dataset.num_items - 1
  assert chi2 < dof + 6 * np.sqrt(2 * dof)


def test_uniform_mode_rejects_nothing(dataset):
  spec, arrays = _arrays(dataset, reject=False)
  u, i, label = ep.host_examples(spec, arrays, ep.epoch_keys(0, 0), np.arange(spec.num_examples))
  neg = label == 0
  hits = np.mean([(a, b) in _known(dataset) for a, b in zip(u[neg].tolist(), i[neg].tolist())])
  density = dataset.num_train / (dataset.num_users * dataset.num_items)
  assert abs(hits - density) < 0.05


def test_a_user_who_knows_every_item_is_a_clear_error():
  users = np.zeros(5, np.int32)
  items = np.arange(5, dtype=np.int32)
  with pytest.raises(Exception, match='user 0 has interacted with all 5 items'):
    ep.build_arrays(users, items, users, items, 1, 5, 4, True)


@pytest.mark.parametrize('use_bitmap', [True, False])
def test_planned_state_bytes_match_the_built_arrays(dataset, use_bitmap):
  _, arrays = _arrays(dataset, use_bitmap=use_bitmap)
  planned = ep.planned_state_bytes(dataset.num_users, dataset.num_items, dataset.num_train,
                                   use_bitmap=use_bitmap)
  assert planned['total'] == ep.state_bytes(arrays)
  assert planned['use_bitmap'] == use_bitmap


# A typical mask; more set than the buffer holds; a length not a multiple of 32, all set, a
# buffer longer than the mask (padding).
@pytest.mark.parametrize('n,share,size', [(4096, 0.07, 400), (100, 0.3, 10), (37, 1.0, 40)])
def test_compaction_lists_the_set_positions_in_order(n, share, size):
  mask = np.random.default_rng(n + size).random(n) < share
  got = jax.jit(lambda m: ep._compact(jnp, jax.lax, m, size))(mask)
  expected = np.flatnonzero(mask)[:size]
  expected = np.concatenate([expected, np.full(size - len(expected), n)])
  np.testing.assert_array_equal(np.asarray(got), expected)


def _lanes_left(spec, arrays, keys, g):
  """Per batch of indices g (rows): lanes still out of range after the passes every lane
  gets, and negatives whose first candidate is rejected (NumPy, for the coverage checks)."""
  x = ep.feistel(np, spec, keys, g.astype(np.uint32))
  for _ in range(ep.PERMUTE_PASSES_FOR_ALL - 1):
    x = np.where(x >= spec.num_examples, ep.feistel(np, spec, keys, x), x)
  s = ep.host_permute(spec, keys, g.ravel()).reshape(g.shape)
  t = s - np.uint32(spec.num_positives)
  neg = s >= spec.num_positives
  users = arrays['pos_users'][np.where(neg, t // np.uint32(spec.num_negatives), s)]
  word = ep.candidate_words(np, keys, t.ravel(), 0)[0].reshape(g.shape)
  _, ok = ep.candidate(np, spec, arrays, users.ravel(), word.ravel())
  rejected = neg & ~ok.reshape(g.shape)
  return (x >= spec.num_examples).sum(axis=1), rejected.sum(axis=1)


@pytest.mark.parametrize('use_bitmap', [True, False])
def test_device_buffers_of_any_size_give_the_host_integers(use_bitmap):
  # Sparse data (few rejections): the device executor's buffers are smaller than a batch.
  data = synthetic.generate(num_users=300, num_items=400, interactions_per_user=12,
                            num_test_negatives=10, seed=4)
  spec, arrays = ep.build_arrays(data.train_users, data.train_items, data.train_users,
                                 data.train_items, data.num_users, data.num_items, 4, True,
                                 use_bitmap)
  lanes = 512
  batches = -(-spec.num_examples // lanes)
  g = np.minimum(np.arange(batches * lanes), spec.num_examples - 1).reshape(batches, lanes)
  keys = ep.epoch_keys(2, 5)
  host = ep.host_examples(spec, arrays, keys, g.ravel())
  permute_left, negatives_left = _lanes_left(spec, arrays, keys, g)
  permute_buffer = ep.buffer_size(lanes, (1 - spec.num_examples / 2**spec.perm_bits)**2)
  negative_buffer = ep.buffer_size(lanes, 0.8 * spec.first_reject_rate)
  buffers = (None, 8)
  for max_buffer in buffers:
    cap = lambda size: size if max_buffer is None else min(size, max_buffer)
    # The case is what it claims: the batches' lanes left fit the buffers, or some overflow.
    for left, size in ((permute_left, cap(permute_buffer)), (negatives_left, cap(negative_buffer))):
      assert size < lanes
      if max_buffer is None:
        assert np.all(left <= size) and np.any(left > 0)
      else:
        assert np.any(left > size)
  # One batch at a time, as in training (lax.map keeps each batch's own path); both buffer
  # sizes in one program (one compilation).
  run = jax.jit(lambda a, k, g: [jax.lax.map(
      lambda row, b=b: ep.device_examples(spec, a, k, row, b), g) for b in buffers])
  for device in run(arrays, keys, g.astype(np.uint32)):
    for h, d in zip(host, device):
      np.testing.assert_array_equal(h, np.asarray(d).ravel())
