"""The baselines experiment end to end on synthetic data (smoke grids), and its pieces."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import baselines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_znormalise_and_seed_interval_against_hand_values():
  z = baselines.znormalise(np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
  np.testing.assert_allclose(z[0], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
  assert np.all(z[1] == 0.0)  # a constant user stays constant (and ranks last)
  s = baselines.seed_interval([0.70, 0.72, 0.74])
  # t(0.975, 2) = 4.303; std 0.02; half-width 4.303 * 0.02 / sqrt(3)
  assert s['ci95'][1] - s['mean'] == pytest.approx(4.3027 * 0.02 / np.sqrt(3), rel=1e-3)


def test_smoke_run_writes_baselines_with_intervals(tmp_path):
  pytest.importorskip('implicit')
  command = [sys.executable, '-m', 'experiments.reproduce', '--experiment=baselines',
             '--dataset=synthetic', '--synthetic_users=200', '--num_epochs=2', '--seeds=0,1',
             '--baselines_grid=smoke', f'--runs_dir={tmp_path / "runs"}',
             f'--results_dir={tmp_path / "results"}']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, JAX_NUMPY_RANK_PROMOTION='raise'))
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / 'results' / 'summary.json').read_text())
  entries = {e['model']: e for e in summary['baselines']}
  assert {'EASE', 'iALS-16', 'implicit-als'} <= set(entries)
  for e in entries.values():
    for key in ('hr', 'ndcg', 'hr_ci95', 'ndcg_ci95', 'full_hr', 'full_ndcg', 'corrected_hr',
                'selection', 'seeds', 'command'):
      assert key in e, (e['model'], key)
    assert e['hr_ci95'][0] <= e['hr'] <= e['hr_ci95'][1]
    assert e['corrected_hr'] < e['hr']  # sampled HR overstates full-ranking HR
  details = json.loads((tmp_path / 'results' / 'baselines.json').read_text())
  # The chosen EASE is the one with the best validation HR of its grid.
  grid = details['grids']['ease']
  best = max(grid, key=lambda r: r['valid_hr'])
  assert entries['EASE']['valid_hr'] == best['valid_hr']
  assert len(details['seeds']['ials']['runs']) == 2
  # Each seed's validation figure is its run's own (on the holdout its seed drew), as the
  # run recorded it: evaluating seed 1 on seed 0's holdout would score items it trained on.
  for row in details['seeds']['ials']['runs']:
    name = f"ials-a{row['unobserved_weight']:g}-l{row['regularization']:g}"
    name += '' if row['seed'] == 0 else f"-seed{row['seed']}"
    records = [json.loads(line) for line in
               (tmp_path / 'runs' / 'baselines' / name / 'metrics.jsonl').open()]
    assert row['valid_hr'] == pytest.approx(max(r['valid_hr'] for r in records), abs=1e-9)
  assert details['paired'] and all(0 < p['hr']['p_value'] <= 1 for p in details['paired'])
  assert 'Paired bootstrap' in (tmp_path / 'results' / 'baselines.md').read_text()


def test_table2_batch256_status_of_a_partial_run(tmp_path):
  from conftest import make_config, train_quietly  # pylint: disable=g-import-not-at-top
  from experiments import table2_batch256  # pylint: disable=g-import-not-at-top
  train_quietly(make_config(num_epochs=2), tmp_path / 'run')
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').open()]
  status = table2_batch256.run_status(str(tmp_path / 'run'))
  best = max(records, key=lambda r: r['hr'])
  assert status['epochs_done'] == 2 and status['finished']
  assert (status['best_epoch'], status['hr']) == (best['epoch'], best['hr'])
  assert table2_batch256.run_status(str(tmp_path / 'absent'))['epochs_done'] == 0


def test_lattice_search_moves_the_choice_off_the_grid_edge():
  # A unimodal validation surface peaking at (0.9, 0.063), off the initial grid's edge.
  calls = []

  def valid_hr(point):
    calls.append(point)
    return -abs(np.log(point[0] / 0.9)) - abs(np.log(point[1] / 0.063))

  out = baselines.lattice_search(((0.01, 0.007), (0.1, 0.007)), (3.0, 3.0), valid_hr, 20)
  assert out['chosen'] == (0.9, 0.063) and out['interior']
  assert len(calls) == len(set(calls)) == len(out['order'])  # each point trained once
  # Every neighbour of the choice was evaluated and is worse.
  for n in baselines.neighbours(out['chosen'], (3.0, 3.0)):
    assert n in out['order'] and valid_hr(n) < valid_hr(out['chosen'])
  short = baselines.lattice_search(((0.01, 0.007), (0.1, 0.007)), (3.0, 3.0), valid_hr, 1)
  assert not short['interior'] and len(short['order']) == 3


def test_table2_batch256_per_user_intervals_from_the_best_checkpoint(tmp_path):
  from conftest import make_config, train_quietly  # pylint: disable=g-import-not-at-top
  from experiments import table2_batch256  # pylint: disable=g-import-not-at-top
  from ncf_jax import run_settings  # pylint: disable=g-import-not-at-top
  from ncf_jax.data import registry  # pylint: disable=g-import-not-at-top
  config = make_config(num_epochs=2)
  train_quietly(config, tmp_path / 'run')
  status = {'run': table2_batch256.run_status(str(tmp_path / 'run')),
            'stale': dict(table2_batch256.run_status(str(tmp_path / 'run')), hr=0.0),
            'absent': table2_batch256.run_status(str(tmp_path / 'absent'))}
  table2_batch256.add_per_user_intervals(
      status, registry.load_dataset(run_settings.data_settings(config)))
  run = status['run']
  assert run['hr_ci95'][0] <= run['hr'] <= run['hr_ci95'][1]
  assert run['ndcg_ci95'][0] <= run['ndcg'] <= run['ndcg_ci95'][1]
  assert 'ndcg_ci95' not in status['stale']  # the checkpoint is not what the record says
  assert 'ndcg_ci95' not in status['absent']
