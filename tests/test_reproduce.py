"""The experiment runner: plans, runs, resumes, and writes its tables (smoke run on synthetic).
The command runs in this process (`run_entry`): what it trains is what is tested, not its
process (`test_help` runs it as one; `test_faults_cli` its one-line failure)."""

import json
import os

from absl import flags
import pytest

from conftest import entry_flags, run_entry
from experiments import reproduce
from ncf_jax import ensemble

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mlp_layers_halve_down_to_the_factors():
  assert reproduce.mlp_layers(0, 8) == (8,)
  assert reproduce.mlp_layers(3, 8) == (64, 32, 16, 8)
  assert reproduce.mlp_layers(4, 16) == (256, 128, 64, 32, 16)


def _reproduce(tmp_path, *args):
  result = run_entry('experiments.reproduce', '--dataset=synthetic', '--synthetic_users=120',
                     '--num_epochs=1', f'--runs_dir={tmp_path / "runs"}',
                     f'--results_dir={tmp_path / "results"}', *args, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


@pytest.fixture
def dry_run(tmp_path):
  """The command lines `reproduce --dry_run` prints, planned in-process (flags parsed here)."""

  def commands(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['reproduce', '--dataset=synthetic', '--synthetic_users=120', '--num_epochs=1',
                 f'--runs_dir={tmp_path / "runs"}', f'--results_dir={tmp_path / "results"}',
                 *args])
    return [run.command() for run in reproduce.plan(flags.FLAGS.experiment)]

  with entry_flags(reproduce.define_flags):
    yield commands
  flags.FLAGS.unparse_flags()


def test_shared_runs_use_one_workdir(dry_run):
  # The factors figure's GMF/MLP/NeuMF and Table 3's 3-layer MLP are Table 2's runs.
  factors = dry_run('--experiment=factors', '--factors=8', '--mf_factors=16')
  table3 = dry_run('--experiment=table3', '--factors=8')
  workdirs = lambda lines: [line.split('--workdir=')[1].split()[0] for line in lines]
  assert [w.split('runs/')[-1] for w in workdirs(factors)] == [
      'table2/pre-8/gmf', 'table2/pre-8/mlp', 'table2/neumf-8', 'factors/mf-16']
  assert [w.split('runs/')[-1] for w in workdirs(table3)] == [
      'table3/mlp0-8', 'table3/mlp1-8', 'table3/mlp2-8', 'table2/pre-8/mlp', 'table3/mlp4-8']
  assert '--config.layers="(8,)"' in table3[0] and '--config.layers' not in table3[3]
  # At 64 factors every run trains at Table 2's batch size, so the 3-layer MLP is shared too.
  table3_64 = dry_run('--experiment=table3', '--factors=64')
  assert workdirs(table3_64)[3].endswith('runs/table2/pre-64/mlp')
  assert all('--config.batch_size=1024' in line for line in table3_64)


def test_table2_then_factors_smoke_runs_write_results_share_runs_and_resume(tmp_path):
  _reproduce(tmp_path, '--experiment=table2', '--factors=8')
  summary = json.loads((tmp_path / 'results' / 'summary.json').read_text())
  rows = summary['table2']
  assert [(r['factors'], r['pretrained']) for r in rows] == [(8, False), (8, True)]
  assert all(0 < r['hr'] <= 1 and r['paper_hr'] == reproduce.PAPER_TABLE2[(8, r['pretrained'])][0]
             for r in rows)
  assert 'neumf-8' in (tmp_path / 'results' / 'table2.md').read_text()
  again = _reproduce(tmp_path, '--experiment=table2', '--factors=8')
  assert again.count('finished earlier') == 4  # neumf, and the pipeline's three stages

  # The factors figure trains only MF: its GMF, MLP and NeuMF are Table 2's runs.
  factors = _reproduce(tmp_path, '--experiment=factors', '--factors=8', '--mf_factors=8')
  assert factors.count('finished earlier') == 3
  result = json.loads((tmp_path / 'results' / 'factors.json').read_text())
  rows = {row['name']: row for row in result['rows']}
  assert set(rows) == {'gmf-8', 'mlp-8', 'neumf-8', 'mf-8', 'itempop'}
  for name in ('gmf-8', 'mlp-8', 'neumf-8', 'mf-8'):
    row = rows[name]
    assert 0 <= row['full_hr'] <= row['hr'] <= 1  # all items are harder than 99 negatives
    assert row['command'].startswith('python -m ncf_jax.main --config=configs/')
    assert os.path.isfile(os.path.join(REPO, row['workdir'], 'full_ranking.json'))
  assert rows['itempop']['best_epoch'] is None and 0 < rows['itempop']['hr'] < 1
  assert 'mf-8' in (tmp_path / 'results' / 'factors.md').read_text()


def test_best_is_the_ensemble_of_validation_selected_seeds(tmp_path):
  _reproduce(tmp_path, '--experiment=best', '--seeds=0,1')
  best = json.loads((tmp_path / 'results' / 'summary.json').read_text())['best']
  assert best['selection'] == 'validation' and 'ensemble of 2 seeds' in best['model']
  assert best['command'].startswith('python -m experiments.reproduce --experiment=best')
  assert '--seeds=0,1' in best['command']
  singles = best['single_runs']
  assert [s['seed'] for s in singles] == [0, 1]
  assert all('--config.validation=true' in s['command'] for s in singles)
  workdirs = [tmp_path / 'runs' / 'best' / f'mf-192-seed{seed}' for seed in (0, 1)]
  for single, workdir in zip(singles, workdirs):
    metrics = [json.loads(line) for line in open(workdir / 'metrics.jsonl')]
    chosen = max(metrics, key=lambda r: r['valid_hr'])
    assert (single['epoch'], single['hr']) == (chosen['epoch'], chosen['hr'])
  assert best['single_mean_hr'] == pytest.approx((singles[0]['hr'] + singles[1]['hr']) / 2)
  assert best['hr'] == pytest.approx(
      ensemble.evaluate_ensemble([str(w) for w in workdirs])['hr'])


def test_seed_statistics_group_runs_that_differ_only_in_seed():
  rows = [dict(factors=8, seed=s, hr=hr, ndcg=0.4) for s, hr in enumerate((0.6, 0.7, 0.8))]
  rows.append(dict(factors=16, seed=0, hr=0.5, ndcg=0.3))
  lines = reproduce.seed_statistics(rows, ['factors'])
  assert len(lines) == 2
  assert 'factors 8: 3 seeds' in lines[0] and 'hr 0.7000 ± 0.1000' in lines[0]
  assert 'ndcg 0.4000 ± 0.0000' in lines[0]
  assert 'factors 16: 1 seed,' in lines[1] and 'hr 0.5000 ± 0.0000' in lines[1]


def test_write_only_trains_nothing_and_leaves_unfinished_runs_out(tmp_path):
  out = _reproduce(tmp_path, '--experiment=negatives', '--write_only')
  assert out.count('not finished') == 30  # GMF, MLP, NeuMF at 1..10 negatives
  assert not (tmp_path / 'runs').exists()
  result = json.loads((tmp_path / 'results' / 'negatives.json').read_text())
  assert result['rows'] == [] and '--write_only' not in result['command']


def test_full_ranking_cache_of_another_epoch_is_recomputed(tmp_path):
  from ncf_jax.configs import test as test_config
  from experiments import report
  from ncf_jax import train
  config = test_config.get_config()
  config.num_epochs = 1
  train.train_and_evaluate(config, str(tmp_path))
  row = report.summarize_run(str(tmp_path), full_ranking=True)
  cache = tmp_path / report.FULL_RANKING_FILE
  assert json.loads(cache.read_text())['epoch'] == row['best_epoch']
  cache.write_text(json.dumps(dict(epoch=row['best_epoch'] + 5, hr=2.0, ndcg=2.0)))
  again = report.summarize_run(str(tmp_path), full_ranking=True)
  assert (again['full_hr'], again['full_ndcg']) == (row['full_hr'], row['full_ndcg'])
  assert 0 <= again['full_hr'] <= 1
