"""Your own interactions: CSV/TSV files with string ids to NCF files, maps and a manifest."""

import csv
import gzip
import hashlib
import io
import json
import os

import numpy as np
import pytest

from ncf_jax.data import dataset as dataset_lib
from ncf_jax.data import delimited
from ncf_jax.data import id_maps
from ncf_jax.data import prepare
from test_prepare import make_rows, write_raw

# SHA-256 prefixes of the files that the integer-id MovieLens code (commit d929540)
# wrote for make_rows(1), seed 3, with validation; the presets must write the same.
# (NumPy's random streams are part of this: a NumPy that changes them changes these.)
REPLACED_CODE_OUTPUT = {
    'test.negative': '397669215663caf4',
    'test.rating': 'f38a619400b30538',
    'train.rating': '222c7f7f03c36df6',
    'valid.negative': '415081431120fdd2',
    'valid.rating': '96ba77ba9b626224',
}
NCF_FILES = tuple(REPLACED_CODE_OUTPUT)


def _digests(directory, name):
  return {suffix: hashlib.sha256((directory / f'{name}.{suffix}').read_bytes()).hexdigest()[:16]
          for suffix in NCF_FILES}


@pytest.mark.parametrize('fmt', ['ml-100k', 'ml-1m', 'ml-20m'])
def test_movielens_presets_write_what_the_replaced_code_wrote(tmp_path, fmt):
  raw = write_raw(tmp_path / 'raw', make_rows(1)[0], fmt)
  prepare.prepare(raw, fmt, str(tmp_path / 'out'), protocol=prepare.Protocol(seed=3,
                                                                             validation=True))
  assert _digests(tmp_path / 'out', fmt) == REPLACED_CODE_OUTPUT


def write_table(path, header, rows, sep=',', quote_all=False, encoding='utf-8',
                compress=False, newline='\n') -> str:
  """Writes rows under a header with Python's csv writer (RFC 4180 quoting)."""
  out = io.StringIO()
  writer = csv.writer(out, delimiter=sep, lineterminator=newline,
                      quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
  writer.writerow(header)
  writer.writerows(rows)
  data = out.getvalue().encode(encoding)
  path.write_bytes(gzip.compress(data) if compress else data)
  return str(path)


# variant -> (write_table keyword arguments, prepare's format and separator)
VARIANTS = {
    'csv': ({}, 'csv', None),
    'tsv': (dict(sep='\t'), 'tsv', None),
    'semicolons': (dict(sep=';'), 'csv', ';'),
    'gzip': (dict(compress=True), 'csv', None),
    'quoted (csv module)': (dict(quote_all=True), 'csv', None),
    'crlf': (dict(newline='\r\n'), 'csv', None),
    'utf-16': (dict(encoding='utf-16'), 'csv', None),
    'utf-8 with a byte-order mark': (dict(encoding='utf-8-sig'), 'csv', None),
}


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_a_movielens_file_as_csv_gives_the_preset_files(tmp_path, variant):
  """Columns by name, in any order, any delimiter or encoding: the same path as the preset."""
  options, fmt, sep = VARIANTS[variant]
  rows = make_rows(1)[0]
  table = [(t, 'x', i, u, f'{r:g}') for u, i, r, t in rows]  # an extra column, other order
  raw = write_table(tmp_path / 'log', ['when', 'other', 'movie', 'user', 'stars'], table,
                    **options)
  layout = prepare.layout_for(fmt, user_col='user', item_col='movie', time_col='when',
                              rating_col='stars', sep=sep,
                              encoding='utf-16' if variant == 'utf-16' else 'utf-8')
  prepare.prepare(raw, layout, str(tmp_path / 'out'), name='ml',
                  protocol=prepare.Protocol(seed=3, validation=True))
  assert _digests(tmp_path / 'out', 'ml') == REPLACED_CODE_OUTPUT


def string_id_log(seed: int = 0):
  """(user, item, time) rows with string ids: 13 users with 25-40 items, 2 with 10 (dropped).

  Ids include spaces, commas, quotes and non-ASCII letters; times tie often;
  each kept user rates one item twice, the second time after everything else.
  """
  rng = np.random.default_rng(seed)
  items = [f'B00X{k:05d}' for k in range(200)] + ['sku 17', 'a,b', 'say "hi"', 'café']
  users = [f'u_{k:04d}' for k in range(12)] + ['Zoë', 'x;y', 'lost 1']
  rows = []
  for k, user in enumerate(users):
    count = 10 if k >= 13 or user == 'x;y' else int(rng.integers(25, 41))
    chosen = rng.choice(len(items), count, replace=False)
    times = rng.integers(1000, 1020, count)
    rows += [(user, items[j], int(t)) for j, t in zip(chosen, times)]
    if count > 10:
      rows.append((user, items[chosen[0]], 5000))  # a duplicate pair, re-rated last
  order = rng.permutation(len(rows))
  return [rows[j] for j in order]


def reference(rows, min_user_interactions: int = 20):
  """{original user: {original item: earliest time}} of the users the protocol keeps."""
  earliest = {}
  for user, item, t in rows:
    earliest.setdefault(user, {})
    earliest[user][item] = min(t, earliest[user].get(item, t))
  return {u: items for u, items in earliest.items() if len(items) >= min_user_interactions}


def original_interactions(data, maps):
  """{original user: {original item: time}} of a Dataset, held-out items with time None."""
  out = {}
  for u, i, t in zip(data.train_users, data.train_items, data.train_timestamps):
    out.setdefault(maps.users[u], {})[maps.items[i]] = int(t)
  for held in (data.test, data.valid):
    for u, i in zip(held.users, held.items) if held is not None else ():
      out[maps.users[u]][maps.items[i]] = None
  return out


def test_string_ids_map_back_to_the_file(tmp_path):
  rows = string_id_log()
  raw = write_table(tmp_path / 'log.csv', ['user', 'item', 'time'], rows)
  layout = prepare.layout_for('csv', user_col='user', item_col='item', time_col='time')
  out = tmp_path / 'out'
  data = prepare.prepare(raw, layout, str(out), protocol=prepare.Protocol(validation=True))
  maps = id_maps.read_id_maps(str(out))
  expected = reference(rows)
  assert set(maps.users) == set(expected) and len(maps.users) == data.num_users == 13
  # Numbered by first appearance in the file.
  first_seen = list(dict.fromkeys(u for u, _, _ in rows if u in expected))
  assert list(maps.users) == first_seen
  got = original_interactions(data, maps)
  assert {u: set(items) for u, items in got.items()} == {
      u: set(items) for u, items in expected.items()}
  for user, items in got.items():
    times = expected[user]
    held = [i for i, t in items.items() if t is None]
    assert len(held) == 2  # test and validation
    assert all(t is None or t == times[i] for i, t in items.items())  # earliest time kept
    latest = max(times.values())
    assert latest < 5000  # the re-rated pair counts at its first time
    assert times[maps.items[data.test.items[maps.user_index(user)]]] == latest
  # The maps are plain text, one id per line; the loaded dataset finds them.
  assert (out / 'users.tsv').read_text(encoding='utf-8').splitlines() == list(maps.users)
  loaded = dataset_lib.load_ncf_dir(str(out), 'log')
  assert id_maps.id_maps_for(loaded) == maps
  assert maps.item_index('café') == maps.items.index('café')
  user_ids, item_ids = maps  # unpacks as a pair
  assert user_ids == maps.users and item_ids == maps.items


def test_manifest_counts_what_was_dropped(tmp_path):
  rows = string_id_log() + [('lost 2', 'B00X00001', 5)]  # rated 1: below --min_rating
  raw = write_table(tmp_path / 'log.csv', ['user', 'item', 'time', 'stars'],
                    [(u, i, t, 1 + t % 5) for u, i, t in rows])
  layout = prepare.layout_for('csv', user_col='user', item_col='item', time_col='time',
                              rating_col='stars')
  protocol = prepare.Protocol(min_rating=2)
  data = prepare.prepare(raw, layout, str(tmp_path / 'out'), protocol=protocol)
  manifest = id_maps.read_manifest(str(tmp_path / 'out'))
  raw_bytes = open(raw, 'rb').read()
  assert manifest['source'] == dict(file='log.csv', size=len(raw_bytes),
                                    sha256=hashlib.sha256(raw_bytes).hexdigest())
  assert manifest['heldout'] == 'latest'
  assert manifest['parameters']['min_rating'] == 2 and manifest['parameters']['user'] == 'user'
  kept = [(u, i, t) for u, i, t in rows if 1 + t % 5 >= 2]
  expected = reference(kept)
  before, after = manifest['before'], manifest['after']
  assert before == dict(rows=len(rows), users=len({r[0] for r in rows}),
                        items=len({r[1] for r in rows}))
  assert after == dict(users=len(expected), items=data.num_items,
                       interactions=sum(map(len, expected.values())))
  dropped = manifest['dropped_rows']
  assert dropped['rating_below_min_rating'] == len(rows) - len(kept)
  assert dropped['duplicate_pair'] == len(kept) - len({(u, i) for u, i, _ in kept})
  assert sum(dropped.values()) == before['rows'] - after['interactions']
  assert manifest['dropped_users']['no_rating_at_least_min_rating'] == 1  # 'lost 2'
  assert sum(manifest['dropped_users'].values()) == before['users'] - after['users']
  assert manifest['split'] == dict(train=data.num_train, test=data.num_users, valid=0)
  assert manifest['files'] == [f'log.{s}' for s in ('train.rating', 'test.rating',
                                                     'test.negative')]


def test_without_time_the_heldout_item_is_random_and_seeded(tmp_path):
  rows = string_id_log()
  raw = write_table(tmp_path / 'log.csv', ['item', 'user'], [(i, u) for u, i, _ in rows])
  layout = prepare.layout_for('csv', user_col='user', item_col='item')
  picks = []
  for seed in (0, 0, 1):
    out = tmp_path / f'out{len(picks)}'
    data = prepare.prepare(raw, layout, str(out), protocol=prepare.Protocol(seed=seed))
    picks.append(data.test.items)
    assert not data.train_timestamps.any()
    assert id_maps.read_manifest(str(out))['heldout'] == 'random'
  np.testing.assert_array_equal(picks[0], picks[1])
  assert (picks[0] != picks[2]).any()


def test_ties_in_time_are_broken_by_the_seed(tmp_path):
  rows = [(f'u{u}', f'i{i}', 100 if i >= 20 else i) for u in range(3) for i in range(22)]
  rows += [(f'u{i // 100}', f'i{i}', 0) for i in range(100, 300)]  # items for 99 negatives
  raw = write_table(tmp_path / 'log.csv', ['user', 'item', 'time'], rows)
  layout = prepare.layout_for('csv', user_col='user', item_col='item', time_col='time')
  picks = set()
  for seed in range(8):
    data = prepare.prepare(raw, layout, str(tmp_path / 'out'), protocol=prepare.Protocol(seed=seed))
    maps = id_maps.read_id_maps(str(tmp_path / 'out'))
    picks.add(maps.items[data.test.items[maps.user_index('u0')]])
  assert picks == {'i20', 'i21'}


def test_min_user_interactions_knob(tmp_path):
  rows = string_id_log()
  raw = write_table(tmp_path / 'log.csv', ['user', 'item', 'time'], rows)
  layout = prepare.layout_for('csv', user_col='user', item_col='item', time_col='time')
  data = prepare.prepare(raw, layout, str(tmp_path / 'out'),
                         protocol=prepare.Protocol(min_user_interactions=2, test_negatives=50))
  assert data.num_users == len(reference(rows, 2)) == 15
  assert data.test.negatives.shape == (15, 50)


def test_mlperf_preset_stores_999_negatives_as_npy(tmp_path):
  rng = np.random.default_rng(0)
  lines = ['userId,movieId,rating,timestamp']
  for user in range(1, 61):
    count = 19 if user == 60 else 25  # user 60 is dropped
    for item in rng.choice(np.arange(1, 3001), count, replace=False):
      lines.append(f'{user},{item},{rng.integers(1, 11) / 2:g},{rng.integers(10**8, 10**9)}')
  (tmp_path / 'ratings.csv').write_text('\n'.join(lines) + '\n')
  out = tmp_path / 'out'
  data = prepare.prepare(str(tmp_path / 'ratings.csv'), 'ml-20m', str(out),
                         protocol=prepare.PRESETS['mlperf'])
  assert sorted(os.listdir(out)) == ['dataset.json', 'items.tsv', 'ml-20m.test.negative.npy',
                                     'ml-20m.test.rating', 'ml-20m.train.rating', 'users.tsv']
  negatives = np.load(out / 'ml-20m.test.negative.npy')
  assert negatives.dtype == np.int32 and negatives.shape == (59, 999)
  loaded = dataset_lib.load_ncf_dir(str(out), 'ml-20m')
  np.testing.assert_array_equal(loaded.test.negatives, data.test.negatives)
  seen = set(zip(loaded.train_users.tolist(), loaded.train_items.tolist()))
  for user, item, row in zip(loaded.test.users, loaded.test.items, loaded.test.negatives):
    assert len(set(row.tolist())) == 999 and int(item) not in row
    assert not any((int(user), int(n)) in seen for n in row)
  manifest = json.loads((out / 'dataset.json').read_text())
  assert manifest['parameters']['preset'] == 'mlperf'
  assert manifest['parameters']['negatives_format'] == 'npy'
  assert manifest['dropped_users']['below_min_user_interactions'] == 1


def test_wide_rows_find_repeats_as_sorting_does():
  rng = np.random.default_rng(0)
  for width in (7, 2006):
    cand = rng.integers(0, 60, (30, width)).astype(np.int32)
    expected = np.array([[x in row[:j] for j, x in enumerate(row)] for row in cand.tolist()])
    np.testing.assert_array_equal(dataset_lib.later_copies(cand, 60), expected)


def test_small_blocks_read_the_same_as_one(tmp_path, monkeypatch):
  """Files are split in blocks; an id must read the same in blocks of other field widths."""
  rows = [row for row in string_id_log() if '"' not in row[1] and ',' not in row[1]]  # unquoted
  for k in range(30):  # a long id now and then: blocks hash ids at different widths
    rows.insert(10 * k, ('a-much-longer-user-id-than-the-others', f'B00X{k:05d}', k))
  raw = write_table(tmp_path / 'log.csv', ['user', 'item', 'time'], rows)
  layout = prepare.layout_for('csv', user_col='user', item_col='item', time_col='time')
  prepare.prepare(raw, layout, str(tmp_path / 'one'))
  monkeypatch.setattr(delimited, '_BLOCK_BYTES', 200)
  prepare.prepare(raw, layout, str(tmp_path / 'many'))
  for name in sorted(os.listdir(tmp_path / 'one')):
    assert (tmp_path / 'one' / name).read_bytes() == (tmp_path / 'many' / name).read_bytes()
  assert len(id_maps.read_id_maps(str(tmp_path / 'many')).users) == 14
