"""MLPerf v0.5's recipe: ML-20M-layout data prepared with 999 negatives and trained with
configs/mlperf.py; `target_hr` (stop at the first epoch reaching it); and
`exclude_heldout_from_negatives`."""

import os

import numpy as np
import pytest

from conftest import ROOT, make_config, read_records, train_quietly
from ncf_jax import cli
from ncf_jax import epoch as epoch_lib
from ncf_jax import run_dir
from ncf_jax import run_settings
from ncf_jax import trained_run
from ncf_jax import train
from ncf_jax import workdir_flags
from ncf_jax.data import prepare
from ncf_jax.data import synthetic
from ncf_jax.data import registry
from ncf_jax.data.dataset import carve_validation, load_ncf_dir
from ncf_jax.errors import ConfigError


def _write_ml20m_ratings(path, num_users=60, num_items=1200, seed=0):
  """ratings.csv in ML-20M's layout: header, 1-based ids, half-star ratings, timestamps.

  Each user rates 20 of 30 Zipf-popular items (so a trained model ranks some held-out
  items in the top 10 of 1,000, and the check below is not 0 == 0) and 20 of the others,
  which together cover the whole catalogue (so 999 negatives fit).
  """
  rng = np.random.default_rng(seed)
  popularity = 1.0 / np.arange(1, 31)
  lines = ['userId,movieId,rating,timestamp']
  for user in range(1, num_users + 1):
    popular = rng.choice(np.arange(1, 31), 20, replace=False, p=popularity / popularity.sum())
    others = 31 + (np.arange(20) + 20 * (user - 1)) % (num_items - 30)
    for item in np.concatenate([popular, others]):
      lines.append(f'{user},{item},{rng.integers(1, 11) / 2:g},{rng.integers(10**8, 10**9)}')
  path.write_text('\n'.join(lines) + '\n')


def _numpy_hr(trained, dataset, top_k):
  """HR@top_k by the rank rule written out here (ties count against the held-out item; its
  copies among the negatives are not counted), scored one row at a time."""
  hits = []
  for user, item, negatives in zip(dataset.test.users, dataset.test.items,
                                   dataset.test.negatives):
    candidates = np.concatenate([[item], negatives]).astype(np.int32)
    scores = np.asarray(trained.model.apply({'params': trained.params},
                                            np.full(len(candidates), user, np.int32),
                                            candidates))
    rank = sum(1 for negative, score in zip(negatives, scores[1:])
               if negative != item and score >= scores[0])
    hits.append(rank < top_k)
  return float(np.mean(hits))


def test_mlperf_recipe_on_generated_ml20m_layout(tmp_path, capsys):
  # In-process: the commands' flags are tested elsewhere; this is the recipe's data and run.
  _write_ml20m_ratings(tmp_path / 'ratings.csv')
  data_dir = tmp_path / 'ml-20m-mlperf'
  prepare.prepare(str(tmp_path / 'ratings.csv'), 'ml-20m', str(data_dir),
                  protocol=prepare.PRESETS['mlperf'])
  workdir = tmp_path / 'run'
  config = run_dir.load_config_file(cli.shipped_config('configs/mlperf.py'))
  config.update(data_dir=str(data_dir), num_factors=8, layers=(16, 8), batch_size=512,
                num_epochs=2, eval_users_per_block=16)
  capsys.readouterr()
  train.train_and_evaluate(config, str(workdir))
  stdout = capsys.readouterr().out
  assert (data_dir / 'ml-20m.test.negative.npy').is_file()
  dataset = load_ncf_dir(str(data_dir), 'ml-20m')
  assert dataset.test.negatives.shape == (60, 999)
  records = read_records(workdir)
  assert [r['epoch'] for r in records] == [0, 1, 2]
  assert all('hr@20' in r['test'] and 0 <= r['hr'] <= 1 for r in records)
  assert not any(r.get('reached_target') for r in records)
  config = run_dir.RunDir(str(workdir)).read_config()
  assert (config.learning_rate, config.adam_b1, config.adam_b2) == (0.0045, 0.25, 0.5)
  assert config.target_hr == 0.635
  assert stdout.splitlines()[-1].startswith('target HR@10 0.635 not reached in 2 epochs')
  best = trained_run.load_best(str(workdir))
  best_record = next(r for r in records if r['epoch'] == best.epoch)
  assert best_record['hr'] > 0.1  # the popular items were learnt
  # At most one row apart: a near-tie may round differently in the batched program.
  assert abs(_numpy_hr(best, dataset, 10) - best_record['hr']) <= 1 / 60 + 1e-9


def _reference(tmp_path, **overrides):
  """A run without a target: its records, to choose targets from."""
  config = make_config(num_epochs=4, learning_rate=0.01, **overrides)
  _, history = train_quietly(config, tmp_path / 'reference')
  return config, history


def _first_reaching(history, key, target):
  return next((r['epoch'] for r in history[1:] if r[key] >= target), None)


def test_target_stops_at_the_first_epoch_reaching_it(tmp_path, capsys, monkeypatch):
  config, reference = _reference(tmp_path)
  target = max(r['hr'] for r in reference[1:-1])  # reached before the last epoch
  stop = _first_reaching(reference, 'hr', target)
  config.target_hr = target
  workdir = str(tmp_path / 'run')
  _, history = train.train_and_evaluate(config, workdir)
  assert [r['epoch'] for r in history] == list(range(stop + 1))
  assert [r['hr'] for r in history] == [r['hr'] for r in reference[:stop + 1]]
  last = history[-1]
  assert last['reached_target'] is True and last['target_hr'] == target
  assert last['seconds_to_target'] == last['elapsed_seconds'] > 0
  assert not any('reached_target' in r for r in history[:-1])
  line = capsys.readouterr().out.splitlines()[-1]
  assert line == (f"reached HR@10 {last['hr']:.4f} >= target {target:g} at epoch {stop} "
                  f"after {last['seconds_to_target']:.1f} s")
  assert run_dir.RunDir(workdir).is_finished(config.num_epochs, target)
  assert not run_dir.RunDir(workdir).is_finished(config.num_epochs)

  # The same command again resumes, finds the target reached, and trains nothing.
  def no_training(*args, **kwargs):
    raise AssertionError('trained after the target was reached')

  monkeypatch.setattr(train, 'train_epoch', no_training)
  monkeypatch.setattr(train.Experiment, 'batch_source', no_training)
  metrics = (tmp_path / 'run' / 'metrics.jsonl').read_text()
  _, again = train.train_and_evaluate(config, workdir)
  assert again == history and (tmp_path / 'run' / 'metrics.jsonl').read_text() == metrics
  assert capsys.readouterr().out.splitlines()[-1] == line


def test_raising_the_target_continues_the_run(tmp_path):
  config, reference = _reference(tmp_path)
  hrs = sorted({r['hr'] for r in reference[1:]})
  low, high = hrs[0], hrs[-1]
  config.target_hr = low
  train_quietly(config, tmp_path / 'run')
  config.target_hr = high
  _, history = train_quietly(config, tmp_path / 'run')
  stop = _first_reaching(reference, 'hr', high)
  assert [r['hr'] for r in history] == [r['hr'] for r in reference[:stop + 1]]
  marked = [(r['epoch'], r['target_hr']) for r in history if r.get('reached_target')]
  assert marked == [(_first_reaching(reference, 'hr', low), low), (stop, high)]


def test_target_never_reached_trains_every_epoch(tmp_path, capsys):
  config = make_config(num_epochs=2, target_hr=1.0)
  _, history = train.train_and_evaluate(config, str(tmp_path))
  assert [r['epoch'] for r in history] == [0, 1, 2]
  assert not any('reached_target' in r or 'seconds_to_target' in r for r in history)
  assert capsys.readouterr().out.splitlines()[-1].startswith(
      'target HR@10 1 not reached in 2 epochs (best ')
  assert run_dir.RunDir(str(tmp_path)).is_finished(2, 1.0)


def test_target_with_validation_is_checked_on_valid_hr(tmp_path, capsys):
  # A target that validation and test HR first reach at different epochs (the first seed
  # whose run offers one).
  for seed in range(4):
    config, reference = _reference(tmp_path / f'seed{seed}', validation=True, seed=seed)
    targets = [r['valid_hr'] for r in reference[1:]
               if _first_reaching(reference, 'valid_hr', r['valid_hr'])
               != _first_reaching(reference, 'hr', r['valid_hr'])]
    if targets:
      break
  assert targets
  config.target_hr = targets[0]
  _, history = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert history[-1]['epoch'] == _first_reaching(reference, 'valid_hr', targets[0])
  assert history[-1]['reached_target'] is True
  assert capsys.readouterr().out.splitlines()[-1].startswith('reached valid HR@10 ')


def test_target_does_not_change_the_default_workdir():
  config_file = cli.shipped_config('configs/mlperf.py')
  config = run_dir.load_config_file(config_file)
  plain = workdir_flags.default_workdir(config_file, config, cwd=ROOT)
  config.target_hr = 0.0
  assert workdir_flags.default_workdir(config_file, config, cwd=ROOT) == plain
  config.exclude_heldout_from_negatives = True
  assert workdir_flags.default_workdir(config_file, config, cwd=ROOT) != plain


@pytest.mark.parametrize('overrides,field', [
    (dict(target_hr=-0.1), 'config.target_hr'), (dict(target_hr=1.5), 'config.target_hr'),
    (dict(exclude_heldout_from_negatives=True, reject_positives=False),
     'config.exclude_heldout_from_negatives')])
def test_bad_values_name_the_field(tmp_path, overrides, field):
  with pytest.raises(ConfigError, match=field):
    train_quietly(make_config(**overrides), tmp_path / 'run')
  assert not os.listdir(tmp_path)


@pytest.fixture(scope='module')
def small():
  """Few items, so that a user's held-out items are often drawn as negatives."""
  dataset = synthetic.generate(num_users=60, num_items=30, interactions_per_user=12,
                               num_test_negatives=10, seed=1)
  return carve_validation(dataset, seed=0, num_negatives=10)


def _negative_pairs(dataset, epoch, exclude_heldout=False, reject=True) -> set:
  spec, arrays = train.epoch_definition(dataset, 4, reject, exclude_heldout)
  users, items, labels = epoch_lib.host_examples(spec, arrays, epoch_lib.epoch_keys(0, epoch),
                                                 np.arange(spec.num_examples))
  neg = labels == 0
  return set(zip(users[neg].tolist(), items[neg].tolist()))


def _heldout_pairs(dataset) -> set:
  return {(int(u), int(i)) for held in (dataset.test, dataset.valid)
          for u, i in zip(held.users, held.items)}


def test_excluded_heldout_items_are_never_negatives(small):
  train_pairs = set(zip(small.train_users.tolist(), small.train_items.tolist()))
  for epoch in (1, 2):
    kept = _negative_pairs(small, epoch, exclude_heldout=True)
    assert not kept & _heldout_pairs(small) and not kept & train_pairs
    drawn = _negative_pairs(small, epoch)
    assert drawn & _heldout_pairs(small)  # the original rule lets them through


def test_the_default_stream_is_the_one_without_heldout_exclusion():
  dataset = synthetic.generate(num_users=200, num_items=90, interactions_per_user=25,
                               num_test_negatives=20, seed=3)
  config = make_config()
  assert config.exclude_heldout_from_negatives is False
  for reject in (True, False):
    spec, arrays = train.epoch_definition(dataset, 4, reject, exclude_heldout=False)
    known = dataset.train_users.astype(np.int64) * dataset.num_items + dataset.train_items
    # Only the training pairs are known: the held-out ones may be drawn.
    cells = np.flatnonzero(np.unpackbits(arrays['bitmap'].view(np.uint8), bitorder='little'))
    np.testing.assert_array_equal(cells, known)


def test_training_samples_against_heldout_items_only_when_asked(tmp_path, monkeypatch):
  known = []
  build = train.epoch_definition

  def recording(*args, **kwargs):
    spec, arrays = build(*args, **kwargs)
    known.append(int(arrays['offsets'][-1]))  # how many pairs negatives avoid
    return spec, arrays

  monkeypatch.setattr(train, 'epoch_definition', recording)
  train_quietly(make_config(num_epochs=1), tmp_path / 'off')
  train_quietly(make_config(num_epochs=1, exclude_heldout_from_negatives=True), tmp_path / 'on')
  dataset = registry.load_dataset(run_settings.data_settings(make_config()))
  assert known == [dataset.num_train, dataset.num_train + len(dataset.test)]
