"""On a GPU or TPU host: training samples/s of both batch executors at the ML-20M shape, and
the MLPerf recipe's time to HR@10 0.635, in a few minutes; writes one JSON file.

  python -m experiments.accelerator_check --out=accelerator.json \
      [--mlperf_data_dir=DIR/ml-20m-mlperf]

1. Throughput: `configs/mlperf.py`'s model (NeuMF-64, layers 256-256-128-64, batch
   1,048,576, Adam) on synthetic data of ML-20M's shape (138,493 users, 26,744 items,
   ~20M positives), two epochs through `train.train_and_evaluate` with `sampler=host` and
   then `sampler=device`; the second epoch's samples/s and input wait are reported (the
   first compiles).
2. Time to target: `configs/mlperf.py` with `sampler=device` on the prepared ML-20M files
   (`python -m ncf_jax.data prepare --preset=mlperf`, made elsewhere: the accelerator host
   may have no network), stopping at HR@10 >= 0.635; `seconds_to_target` from process start.
   Without `--mlperf_data_dir` the same recipe runs on the synthetic data with `--target_hr`
   (a check that the path works, not the MLPerf figure; the JSON says which).

Small-scale CPU rehearsal (what was run on the project's CPU machine):

  python -m experiments.accelerator_check --scale=0.01 --batch_size=16384 \
      --target_hr=0.3 --out=/tmp/accelerator.json
"""

import json
import tempfile
import time

from absl import flags

from ncf_jax import cli

flags.DEFINE_string('out', 'accelerator.json', 'Where to write the JSON results.')
flags.DEFINE_float('scale', 1.0, 'Fraction of ML-20M\'s users to generate (0.01 for a CPU).')
flags.DEFINE_integer('batch_size', 1048576, 'Global batch (MLPerf: 1,048,576).')
flags.DEFINE_string('mlperf_data_dir', None, 'Prepared ml-20m-mlperf NCF files.')
flags.DEFINE_float('target_hr', 0.635, 'HR@10 to stop at.')
flags.DEFINE_integer('max_epochs', 20, 'Epochs at most for the time-to-target run.')
FLAGS = flags.FLAGS
_START = time.time()


def _config(sampler: str, num_epochs: int):
  import math  # pylint: disable=g-import-not-at-top
  from ncf_jax.configs import mlperf  # pylint: disable=g-import-not-at-top
  config = mlperf.get_config()
  config.sampler, config.num_epochs, config.log_every_seconds = sampler, num_epochs, 0.0
  config.batch_size = FLAGS.batch_size
  # The square-root rule for Adam away from the published batch (see configs/mlperf.py).
  config.learning_rate = 0.0045 * math.sqrt(FLAGS.batch_size / 1048576)
  return config


def _synthetic(config):
  config.dataset = 'synthetic'
  config.synthetic.num_users = max(200, int(138_493 * FLAGS.scale))
  config.synthetic.num_items = 26_744 if FLAGS.scale >= 0.1 else 4_000
  config.synthetic.interactions_per_user = 170 if FLAGS.scale >= 0.1 else 40
  config.synthetic.num_clusters = 32
  config.synthetic.num_test_negatives = 999
  return config


def throughput(sampler: str) -> dict:
  from ncf_jax import train  # pylint: disable=g-import-not-at-top
  config = _synthetic(_config(sampler, num_epochs=2))
  config.target_hr = 0.0
  with tempfile.TemporaryDirectory(prefix='ncf_accel_') as workdir:
    _, history = train.train_and_evaluate(config, workdir)
  last = history[-1]
  return dict(sampler=sampler, samples_per_second=last['samples_per_second'],
              train_seconds=last['train_seconds'],
              input_wait_seconds=last.get('input_wait_seconds'),
              first_epoch_seconds=history[1]['train_seconds'], hr=last['hr'])


def time_to_target() -> dict:
  from ncf_jax import train  # pylint: disable=g-import-not-at-top
  config = _config('device', num_epochs=FLAGS.max_epochs)
  config.target_hr = FLAGS.target_hr
  if FLAGS.mlperf_data_dir:
    config.data_dir = FLAGS.mlperf_data_dir
    data = 'ml-20m-mlperf'
  else:
    config = _synthetic(config)
    data = f'synthetic (scale {FLAGS.scale}): a rehearsal, not the MLPerf figure'
  t0 = time.time()
  with tempfile.TemporaryDirectory(prefix='ncf_accel_') as workdir:
    _, history = train.train_and_evaluate(config, workdir)
  reached = next((r for r in history if r.get('reached_target')), None)
  return dict(data=data, target_hr=FLAGS.target_hr, batch_size=config.batch_size,
              learning_rate=config.learning_rate,
              reached=reached is not None, epochs=history[-1]['epoch'],
              seconds_to_target=None if reached is None else reached['seconds_to_target'],
              run_seconds=time.time() - t0, best_hr=max(r['hr'] for r in history))


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from ncf_jax.data import files  # pylint: disable=g-import-not-at-top
  results = dict(backend=jax.default_backend(), device=str(jax.devices()[0]),
                 device_count=jax.device_count(), jax=jax.__version__, scale=FLAGS.scale)
  results['throughput'] = [throughput(s) for s in ('host', 'device')]
  print(json.dumps(results['throughput']), flush=True)
  results['time_to_target'] = time_to_target()
  results['total_seconds'] = time.time() - _START
  files.atomic_write_text(FLAGS.out, json.dumps(results, indent=2) + '\n')
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  cli.run(main)
