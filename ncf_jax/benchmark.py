"""Speed benchmark: sampling, training throughput, evaluation, time to accuracy.

  python -m ncf_jax.benchmark --data_dir=DIR/ml-1m --out=benchmark.json

Every timing is the median over `--repeats` runs after a warm-up (compilation
excluded). Runs unchanged on CPU and GPU; the JSON records jax's version, the
backend and the device. Sections:
  sampler     one epoch of examples (the epoch definition on one host thread)
  input       host and device executors' examples/s at --shape (ncf_jax/benchmark_input.py)
  input_overlap  one NeuMF-8 epoch at batch 65,536 with the host feeder: does the device wait?
  train       samples/s per model x batch size x dense/lazy Adam (the fast path:
              `lax.fori_loop` over `steps_per_dispatch` batches per call)
  eval        99-negative and full-ranking evaluation of all test users
  epoch       whole epochs of `train_and_evaluate` with the paper's settings (batch 256,
              dense Adam), negative sampling and host-to-device feeding included
  accuracy    seconds from process start of `python -m ncf_jax.main` with
              `configs/neumf_fast.py` until test HR@10 >= 0.69 (ML-1M only)
  ml-20m      the same sampler/train/eval numbers on synthetic ML-20M-shaped data
  communication  compile only, no data: the collectives of one compiled train step and the
              table bytes per device, for --num_devices forced CPU devices (the section sets
              XLA_FLAGS itself, before JAX starts), --embedding_sharding, --batch_size,
              --num_users, --num_items, --num_factors, --optimizer, --compute_dtype:
    python -m ncf_jax.benchmark --sections=communication --num_devices=4 \
      --embedding_sharding=rows --batch_size=65536 --num_users=1000000 --num_items=500000 \
      --num_factors=64 --out=comm.json
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

from absl import flags

from ncf_jax import cli
from ncf_jax.data import files


SECTIONS = ('sampler', 'train', 'eval', 'epoch', 'accuracy', 'ml-20m', 'devices', 'lookup',
            'communication', 'input', 'input_overlap')


def define_flags() -> None:
  """The command's flags, defined when it runs (`cli.run`), not at import."""
  flags.DEFINE_string('data_dir', None, 'NCF-format ML-1M directory (default: the registry\'s).')
  flags.DEFINE_string('out', 'benchmark.json', 'Where to write the JSON results.')
  flags.DEFINE_integer('repeats', 5, 'Timed repeats per measurement (the median is reported).')
  flags.DEFINE_list('sections', ['sampler', 'train', 'eval', 'epoch', 'accuracy', 'ml-20m'],
                    'Which sections to run (also: devices, lookup, communication).')
  flags.DEFINE_list('batch_sizes', ['256', '1024', '4096', '16384'], 'Training batch sizes.')
  flags.DEFINE_list('models', ['gmf', 'mlp', 'neumf'], 'Models for the training section.')
  flags.DEFINE_list('ml20m_batch_sizes', ['4096', '16384'],
                    'Training batch sizes on ML-20M-shaped data (small ones take minutes on a '
                    'CPU).')
  flags.DEFINE_list('ml20m_models', ['neumf'], 'Models for the ML-20M training section.')
  flags.DEFINE_integer('ml20m_factors', 8, 'Predictive factors on ML-20M shape (MLPerf: 64).')
  flags.DEFINE_list('ml20m_layers', [], 'MLP layers on ML-20M shape (MLPerf: 256,256,128,64).')
  flags.DEFINE_float('ml20m_scale', 1.0, 'Fraction of ML-20M\'s users to generate (a quick run '
                     'of the same code path: 0.05).')
  flags.DEFINE_integer('devices_batch_size', 4096, 'Global batch of the devices section.')
  flags.DEFINE_bool('skip_ml1m', False, 'Run the sections on ML-20M-shaped data only (a machine '
                    'without the ML-1M files, e.g. an accelerator without network).')
  flags.DEFINE_bool('ml20m_full_ranking', False,
                    'Also time full ranking on ML-20M shape (3.7e9 scores: for accelerators).')
  flags.DEFINE_integer('train_samples', 500_000, 'Examples per timed training repeat.')
  flags.DEFINE_float('target_hr', 0.69, 'HR@10 the accuracy section waits for.')
  flags.DEFINE_integer('accuracy_timeout', 600, 'Seconds before the accuracy run is abandoned.')
  flags.DEFINE_integer('num_devices', 8, 'Forced CPU devices of the communication section.')
  flags.DEFINE_enum('embedding_sharding', 'rows', ['auto', 'replicated', 'rows'],
                    'Table placement of the communication section.')
  flags.DEFINE_integer('batch_size', 65536, 'Global batch of the communication section.')
  flags.DEFINE_integer('num_users', 1_000_000, 'Users (table rows) of the communication section.')
  flags.DEFINE_integer('num_items', 500_000, 'Items (table rows) of the communication section.')
  flags.DEFINE_integer('num_factors', 64, 'Predictive factors of the communication section '
                       '(NeuMF: GMF tables this wide, MLP tables 4x, the original\'s tower).')
  flags.DEFINE_list('layers', [], 'MLP layers of the communication section (MLPerf: '
                    '256,256,128,64; empty: the original\'s tower for --num_factors).')
  flags.DEFINE_string('model', 'neumf', 'Model of the communication section.')
  flags.DEFINE_string('optimizer', 'lazy_adam', 'Optimizer of the communication section.')
  flags.DEFINE_string('compute_dtype', 'float32', 'Compute dtype of the communication section.')
  flags.DEFINE_bool('init_memory', False, 'Communication section: also compile the sharded '
                    'initialisation and report its temporary bytes per device.')
  flags.DEFINE_integer('full_ranking_users', 0, 'Communication section: also compile full '
                       'ranking of this many held-out users and list its collectives (0: no).')
  flags.DEFINE_enum('shape', 'ml-20m', ['ml-1m', 'ml-20m'], 'Synthetic data shape of the input '
                    'sections (scaled by --ml20m_scale).')


FLAGS = flags.FLAGS


def _median_seconds(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, caches
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _config(model: str, batch_size: int, optimizer: str, num_factors: int = 8,
            layers: tuple[int, ...] = (), embedding_sharding: str = 'replicated',
            num_devices: int = 1):
  from ncf_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model, config.batch_size, config.optimizer = model, batch_size, optimizer
  config.num_factors, config.layers = num_factors, tuple(layers)
  config.embedding_sharding, config.num_devices = embedding_sharding, num_devices
  config.steps_per_dispatch = max(1, min(64, 16384 // batch_size * 4))
  return config


def bench_sampler(dataset, repeats: int) -> dict:
  """Seconds for one epoch's examples on one host thread, with rejection and uniform."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ncf_jax import epoch, train  # pylint: disable=g-import-not-at-top
  out = {}
  for name, reject in (('rejection', True), ('uniform', False)):
    spec, arrays = train.epoch_definition(dataset, 4, reject, False)
    keys = epoch.epoch_keys(0, 1)

    def one_epoch():
      for start in range(0, spec.num_examples, 1 << 16):
        epoch.host_examples(spec, arrays, keys,
                            np.arange(start, min(start + (1 << 16), spec.num_examples)))

    out['examples'] = spec.num_examples
    out[f'epoch_{name}_s'] = _median_seconds(one_epoch, max(1, repeats // 2))
  return out


def bench_train(dataset, config, samples: int, repeats: int) -> dict:
  """Samples/s of the compiled train step of `config` (from `_config`), batches already on
  the devices."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from ncf_jax import batch_source, models, optimizers, row_sharded, sharding, train, train_step
  from ncf_jax import run_settings  # pylint: disable=g-import-not-at-top
  batch_size = config.batch_size
  layout = sharding.create_layout(config.num_devices, batch_size, config.embedding_sharding)
  model = models.create_model(run_settings.model_settings(config), dataset.num_users,
                              dataset.num_items, layout.num_devices)
  optimizer_ = optimizers.create_optimizer(run_settings.optimizer_settings(config))
  shardings = layout.state_shardings(train_step.abstract_state(model, optimizer_),
                                     model.table_specs())
  with jax.set_mesh(layout.mesh):  # as train.initial_state: each device draws its rows
    state = jax.jit(lambda: train_step.init_state(models.init_params(model, 0), optimizer_,
                                                  model), out_shardings=shardings)()
  make_chunk = (row_sharded.make_train_chunk if row_sharded.has_row_sharded(model.table_specs())
                else train_step.make_train_chunk)
  chunk_fn = make_chunk(model, optimizer_, run_settings.regularization(config), layout,
                        shardings)
  steps = config.steps_per_dispatch
  source = batch_source.HostBatches(*train.epoch_definition(dataset, 4, True, False), 0,
                                    batch_size, steps, layout)
  chunks = min(max(1, samples // (batch_size * steps)), source.num_steps // steps)
  # Device-resident batches: this section times the train step, not host transfers.
  device_chunks = []
  for inputs, _ in source.chunks(1):
    device_chunks.append(inputs)
    if len(device_chunks) == chunks:
      break
  source.close()
  holder = [state]

  def run():
    s = holder[0]
    for c in device_chunks:
      s, metrics = chunk_fn(s, c, np.int32(steps))
    jax.block_until_ready(metrics)
    holder[0] = s

  seconds = _median_seconds(run, repeats)
  n = chunks * steps * batch_size
  epoch = dataset.num_train * 5
  table_bytes = layout.table_bytes_per_device(holder[0]['params'], model.table_specs())
  return dict(model=config.model, batch_size=batch_size, optimizer=config.optimizer,
              num_factors=config.num_factors, devices=layout.num_devices,
              embedding_sharding=config.embedding_sharding,
              samples_per_second=n / seconds, epoch_seconds=epoch / (n / seconds),
              table_mb_per_device=table_bytes / 2**20)


def bench_devices(dataset, batch_size: int, samples: int, repeats: int) -> list[dict]:
  """NeuMF samples/s and table memory per device against the device count, replicated and
  row-sharded tables. With forced CPU devices (XLA_FLAGS=
  --xla_force_host_platform_device_count=8) this shows overhead, never speed-up: the
  devices share the same cores."""
  import jax  # pylint: disable=g-import-not-at-top
  rows = []
  for num_devices in (n for n in (1, 2, 4, 8) if n <= jax.device_count()):
    for embedding_sharding in ('replicated', 'rows'):
      config = _config('neumf', batch_size, 'adam', embedding_sharding=embedding_sharding,
                       num_devices=num_devices)
      rows.append(bench_train(dataset, config, samples, repeats))
      print(f'  {rows[-1]}', flush=True)
  return rows


def bench_lookup(num_rows: int, dim: int, batch_size: int, repeats: int) -> list[dict]:
  """An embedding lookup and its gradient in the forms XLA offers, for one table.

  gather: `take` forward, scatter-add of the row gradients backward (what the models
  do); sorted: the row gradients sorted by id and summed with a sorted `segment_sum`;
  one_hot: a (batch x rows) one-hot matrix times the table and its transpose times the
  row gradients (dense matmuls; only for small tables).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  # Zipf-like ids: popular items are looked up many times per batch, as in real data.
  ids = jnp.asarray(np.minimum(rng.zipf(1.2, batch_size) - 1, num_rows - 1).astype(np.int32))
  table = jnp.asarray(rng.standard_normal((num_rows, dim)).astype(np.float32))
  upstream = jnp.asarray(rng.standard_normal((batch_size, dim)).astype(np.float32))

  def gather(t, i):
    rows = jnp.take(t, i, axis=0)
    return rows, jax.grad(lambda t: jnp.sum(jnp.take(t, i, axis=0) * upstream))(t)

  def sorted_segments(t, i):
    order = jnp.argsort(i)
    grads = jax.ops.segment_sum(upstream[order], i[order], num_segments=num_rows,
                                indices_are_sorted=True)
    return jnp.take(t, i, axis=0), grads

  def one_hot(t, i):
    hot = jax.nn.one_hot(i, num_rows, dtype=t.dtype)
    return hot @ t, hot.T @ upstream

  forms = dict(gather=gather, sorted=sorted_segments)
  if num_rows * batch_size <= 2**28:  # the one-hot matrix must fit
    forms['one_hot'] = one_hot
  reference = None
  out = []
  for name, form in forms.items():
    fn = jax.jit(form)
    result = jax.block_until_ready(fn(table, ids))
    if reference is None:
      reference = result
    np.testing.assert_allclose(result[1], reference[1], rtol=1e-4, atol=1e-4)  # same gradient
    seconds = _median_seconds(lambda: jax.block_until_ready(fn(table, ids)), repeats)
    out.append(dict(form=name, rows=num_rows, dim=dim, batch_size=batch_size,
                    microseconds=seconds * 1e6))
  return out


def bench_eval(dataset, repeats: int, full_ranking: bool = True) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from ncf_jax import evaluation, models, run_settings  # pylint: disable=g-import-not-at-top
  config = _config('neumf', 256, 'adam')
  model = models.create_model(run_settings.model_settings(config), dataset.num_users,
                              dataset.num_items)
  params = models.init_params(model, 0)
  sampled = evaluation.SampledEvaluator(model, dataset.test, config.eval_users_per_block)
  out = dict(rows=len(dataset.test), candidates=dataset.test.negatives.shape[1] + 1,
             num_items=dataset.num_items,
             sampled_s=_median_seconds(lambda: jax.block_until_ready(sampled.ranks(params)),
                                       repeats), full_ranking_s=None)
  if full_ranking:
    full = evaluation.FullRankingEvaluator(model, dataset.test, dataset.train_users,
                                           dataset.train_items, dataset.num_items)
    out['full_ranking_s'] = _median_seconds(lambda: jax.block_until_ready(full.ranks(params)),
                                            max(1, repeats // 2))
  return out


def bench_epoch(data_dir: str | None, num_epochs: int = 3) -> dict:
  """Epoch wall time of the real training loop, paper settings (epoch 1 includes compiling)."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from ncf_jax.configs import neumf  # pylint: disable=g-import-not-at-top
  from ncf_jax import train  # pylint: disable=g-import-not-at-top
  config = neumf.get_config()
  config.num_epochs, config.log_every_seconds = num_epochs, 0.0
  if data_dir:
    config.data_dir = data_dir
  with tempfile.TemporaryDirectory(prefix='ncf_epoch_') as workdir:
    _, history = train.train_and_evaluate(config, workdir)
  seconds = [r['train_seconds'] for r in history[2:]]
  return dict(model='neumf', batch_size=config.batch_size, optimizer=config.optimizer,
              epoch_seconds_after_first=statistics.median(seconds),
              first_epoch_seconds=history[1]['train_seconds'], hr=history[-1]['hr'])


def bench_accuracy(data_dir: str | None, target: float, timeout: int) -> dict:
  """Wall seconds from launching the main command to the first epoch at `target`."""
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix='ncf_fast_') as workdir:
    command = [sys.executable, '-m', 'ncf_jax.main', '--config=configs/neumf_fast.py',
               f'--workdir={workdir}/run', '--config.log_every_seconds=0']
    if data_dir:
      command.append(f'--config.data_dir={data_dir}')
    t0 = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    result = dict(command=' '.join(command[1:]), target_hr=target, seconds=None, epoch=None)
    try:
      for line in process.stdout:
        match = re.match(r'epoch\s+(\d+).*HR@10 ([0-9.]+)', line)
        if match and float(match.group(2)) >= target:
          result.update(seconds=time.perf_counter() - t0, epoch=int(match.group(1)),
                        hr=float(match.group(2)))
          break
        if time.perf_counter() - t0 > timeout:
          break
    finally:
      process.kill()
      process.wait()
  return result


def _environment() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  return dict(jax=jax.__version__, backend=jax.default_backend(),
              device=getattr(device, 'device_kind', str(device)),
              device_count=jax.device_count(), cpu_count=os.cpu_count(),
              python=platform.python_version(), machine=platform.machine(),
              xla_flags=os.environ.get('XLA_FLAGS', ''))


def _print_table(title: str, rows: list[dict], columns: list[str]) -> None:
  print(f'\n## {title}')
  print(' | '.join(columns))
  print(' | '.join('---' for _ in columns))
  for row in rows:
    print(' | '.join(f'{row[c]:.4g}' if isinstance(row[c], float) else str(row[c])
                     for c in columns))


def _dataset_sections(name, dataset, sections, results, models, batch_sizes, full_ranking=True,
                      num_factors=8, layers=()):
  repeats = FLAGS.repeats
  if 'sampler' in sections:
    results[f'{name}/sampler'] = r = bench_sampler(dataset, repeats)
    _print_table(f'{name}: sampler (seconds per epoch)', [r], list(r))
  if 'train' in sections:
    rows = []
    for model in models:
      for batch in (int(b) for b in batch_sizes):
        for optimizer in ('adam', 'lazy_adam'):
          config = _config(model, batch, optimizer, num_factors, layers)
          rows.append(bench_train(dataset, config, FLAGS.train_samples, repeats))
          print(f'  {rows[-1]}', flush=True)
    results[f'{name}/train'] = rows
    _print_table(f'{name}: training throughput', rows,
                 ['model', 'batch_size', 'optimizer', 'samples_per_second', 'epoch_seconds'])
  if 'devices' in sections:
    results[f'{name}/devices'] = rows = bench_devices(dataset, FLAGS.devices_batch_size,
                                                      FLAGS.train_samples, repeats)
    _print_table(f'{name}: NeuMF against the device count (forced CPU devices show overhead)',
                 rows, ['devices', 'embedding_sharding', 'samples_per_second',
                        'table_mb_per_device'])
  if 'lookup' in sections:
    rows = [r for table in (dataset.num_items, dataset.num_users)
            for r in bench_lookup(table, 64, 16384, repeats)]
    results[f'{name}/lookup'] = rows
    _print_table(f'{name}: embedding lookup + gradient, 64 wide, batch 16384', rows,
                 ['form', 'rows', 'microseconds'])
  if 'eval' in sections:
    results[f'{name}/eval'] = r = bench_eval(dataset, repeats, full_ranking)
    _print_table(f'{name}: evaluation (seconds for all test users)', [r], list(r))


def bench_communication() -> dict:
  """Compile-only: the collectives of one train step and the bytes each device holds."""
  import jax  # pylint: disable=g-import-not-at-top
  from ncf_jax import communication, sharding  # pylint: disable=g-import-not-at-top
  from ncf_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.update(model=FLAGS.model, optimizer=FLAGS.optimizer, batch_size=FLAGS.batch_size,
                num_factors=FLAGS.num_factors, embedding_sharding=FLAGS.embedding_sharding,
                compute_dtype=FLAGS.compute_dtype, num_devices=FLAGS.num_devices,
                layers=tuple(int(w) for w in FLAGS.layers))
  devices = jax.devices('cpu')
  sharding.num_devices_for(FLAGS.num_devices, FLAGS.batch_size, len(devices))
  t0 = time.perf_counter()
  step = communication.measure_train_step(config, FLAGS.num_users, FLAGS.num_items,
                                          FLAGS.num_devices, devices, FLAGS.init_memory)
  if FLAGS.full_ranking_users:
    step['full_ranking'] = communication.measure_full_ranking(
        config, FLAGS.num_users, FLAGS.num_items, FLAGS.num_devices, FLAGS.full_ranking_users,
        devices)
  return dict(model=FLAGS.model, optimizer=FLAGS.optimizer, batch_size=FLAGS.batch_size,
              num_users=FLAGS.num_users, num_items=FLAGS.num_items,
              num_factors=FLAGS.num_factors, layers=[int(w) for w in FLAGS.layers],
              compute_dtype=FLAGS.compute_dtype,
              num_devices=FLAGS.num_devices, embedding_sharding=FLAGS.embedding_sharding,
              **step, compile_seconds=time.perf_counter() - t0)


def _force_cpu_devices(count: int) -> None:
  """XLA_FLAGS asking for `count` host devices; only effective before JAX starts."""
  flag = '--xla_force_host_platform_device_count'
  current = os.environ.get('XLA_FLAGS', '')
  if flag not in current:
    os.environ['XLA_FLAGS'] = f'{current} {flag}={count}'.strip()


def check_flags() -> None:
  """Flag mistakes, before anything is measured (a usage error: one line)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  unknown = [s for s in FLAGS.sections if s not in SECTIONS]
  if unknown or not FLAGS.sections:
    raise app.UsageError(f'--sections={",".join(FLAGS.sections)}: '
                         + (f'unknown {", ".join(unknown)}; ' if unknown else 'empty; ')
                         + f'choose from {", ".join(SECTIONS)}')
  for name in ('repeats', 'train_samples', 'devices_batch_size', 'accuracy_timeout',
               'ml20m_factors'):
    if FLAGS[name].value < 1:
      raise app.UsageError(f'--{name}={FLAGS[name].value}: must be at least 1')
  for name in ('batch_sizes', 'ml20m_batch_sizes', 'ml20m_layers'):
    if not all(v.isdigit() and int(v) > 0 for v in FLAGS[name].value):
      raise app.UsageError(f'--{name}={",".join(FLAGS[name].value)}: must be positive integers')
  if not 0 < FLAGS.ml20m_scale <= 1:
    raise app.UsageError(f'--ml20m_scale={FLAGS.ml20m_scale}: must be in (0, 1]')
  folder = os.path.dirname(os.path.abspath(FLAGS.out))
  if not os.path.isdir(folder):  # a typo should not become a tree of new folders
    raise app.UsageError(f'--out={FLAGS.out}: {folder}: no such directory')


def main(argv):
  del argv
  check_flags()
  sections = set(FLAGS.sections)
  if 'communication' in sections:
    _force_cpu_devices(FLAGS.num_devices)  # before the first import of jax below
  from ncf_jax.configs import default  # pylint: disable=g-import-not-at-top
  from ncf_jax import run_settings  # pylint: disable=g-import-not-at-top
  from ncf_jax.data import registry, synthetic  # pylint: disable=g-import-not-at-top
  results = dict(environment=_environment())
  print(json.dumps(results['environment']))
  if 'communication' in sections:
    results['communication'] = r = bench_communication()
    print(json.dumps({k: v for k, v in r.items() if k != 'collectives'}, indent=1))
    if sections == {'communication'}:  # the JSON object the section is run for, alone
      results = dict(r, environment=results['environment'])
  config = default.get_config()
  if FLAGS.data_dir:
    config.data_dir = FLAGS.data_dir
  if sections & {'sampler', 'train', 'eval', 'devices', 'lookup'} and not FLAGS.skip_ml1m:
    _dataset_sections('ml-1m', registry.load_dataset(run_settings.data_settings(config)),
                      sections, results, FLAGS.models, FLAGS.batch_sizes)
  if 'epoch' in sections:
    results['ml-1m/epoch'] = r = bench_epoch(FLAGS.data_dir)
    _print_table('ml-1m: whole epochs, paper settings (sampling included)', [r], list(r))
  if 'accuracy' in sections:
    results['ml-1m/accuracy'] = r = bench_accuracy(FLAGS.data_dir, FLAGS.target_hr,
                                                   FLAGS.accuracy_timeout)
    _print_table('ml-1m: neumf_fast time to accuracy', [r], list(r))
  if sections & {'input', 'input_overlap'}:
    from ncf_jax import benchmark_input  # pylint: disable=g-import-not-at-top
    t0 = time.perf_counter()
    shaped = benchmark_input.shaped_dataset(FLAGS.shape, FLAGS.ml20m_scale)
    print(f'\nsynthetic {FLAGS.shape} shape ({time.perf_counter() - t0:.0f} s): '
          f'{shaped.stats()}', flush=True)
    if 'input' in sections:
      results[f'{FLAGS.shape}/input'] = r = benchmark_input.bench_input(shaped, FLAGS.repeats)
      results.update({k: v for k, v in r.items() if k != 'planned_state_bytes'})
      _print_table(f'{FLAGS.shape}: input executors (examples/s)', [r],
                   [k for k in r if k != 'planned_state_bytes'])
      print(json.dumps(r['planned_state_bytes']))
    if 'input_overlap' in sections:
      results[f'{FLAGS.shape}/input_overlap'] = r = benchmark_input.bench_input_overlap(shaped)
      results.update(r)
      _print_table(f'{FLAGS.shape}: one NeuMF-8 epoch with the host feeder', [r], list(r))
  if 'ml-20m' in sections:
    t0 = time.perf_counter()
    big = synthetic.generate(num_users=int(138_493 * FLAGS.ml20m_scale), num_items=26_744,
                             interactions_per_user=170, num_clusters=32, seed=0,
                             name='synthetic-ml-20m')
    results['ml-20m/generate_s'] = time.perf_counter() - t0
    print(f'\nsynthetic ML-20M shape: {big.stats()}')
    _dataset_sections('ml-20m', big, sections - {'accuracy', 'epoch'}, results, FLAGS.ml20m_models,
                      FLAGS.ml20m_batch_sizes, FLAGS.ml20m_full_ranking, FLAGS.ml20m_factors,
                      tuple(int(w) for w in FLAGS.ml20m_layers))
  files.atomic_write_text(FLAGS.out, json.dumps(results, indent=2) + '\n')
  print(f'\nwrote {FLAGS.out}')


if __name__ == '__main__':
  cli.run(main, define_flags)
