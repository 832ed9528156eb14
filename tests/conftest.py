"""Settings and helpers every test file shares (import them: `from conftest import ...`).

Rank promotion is an error, so (B,1) vs (B,) mistakes fail loudly. Compiled programs go to
a persistent cache shared by the session's test processes (the pytest-xdist workers) and
their subprocesses (many tests compile the same small programs again), removed when the
session ends.
"""

import atexit
import contextlib
import gc
import hashlib
import importlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings

# The first test process (pytest-xdist's controller, started before its workers) makes the
# folder and removes it at exit; its workers and every subprocess inherit it.
_CACHE = os.environ.get('NCF_JAX_TEST_COMPILE_CACHE')
if not _CACHE:
  _CACHE = os.environ['NCF_JAX_TEST_COMPILE_CACHE'] = tempfile.mkdtemp(
      prefix='ncf_jax_test_compile_cache_')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1')
# The tests' programs are tiny and compiled once or twice each: XLA's backend optimisations
# and its newer fusion emitters cost more time than they save (the same semantics; every
# comparison runs under these flags).
FAST_COMPILE = ('--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true '
                '--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1')
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

# Tracing allocates many short-lived objects, and with Python's default thresholds (700, 10,
# 10) a test process scanned its whole heap (every module, every kept program) thousands of
# times: 9 s of the two workers' CPU on 2026-12-01 (gc.callbacks). Young cycles are still
# collected, every 50,000 allocations.
gc.set_threshold(50_000, 20, 100)

# Read when NumPy loads OpenBLAS (below). With as many BLAS threads as cores while the other
# worker keeps the second core busy, OpenBLAS's waiting threads spin: the files that solve
# and multiply in NumPy (iALS, EASE, intervals, evaluation) took 18-20 s of CPU instead of
# 22-25 s with one thread (2026-12-01, the other core loaded). Subprocesses inherit it.
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

# Read when JAX is imported: by the test files, not here (pytest-xdist's controller, which
# only hands out tests, never imports JAX or the training code).
os.environ['JAX_NUMPY_RANK_PROMOTION'] = 'raise'
if 'jax' in sys.modules:
  sys.modules['jax'].config.update('jax_numpy_rank_promotion', 'raise')

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from ncf_jax import cli
from ncf_jax.configs import test as test_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_blob_sha1(data: bytes) -> str:
  """The id git gives a file with these bytes (`git hash-object`): the reference the
  downloader's chunked digest is checked against."""
  return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def make_config(**overrides):
  """configs/test.py (a seconds-long synthetic run) with `overrides`; a dict value updates a
  nested field (e.g. synthetic=dict(num_users=400))."""
  config = test_config.get_config()
  for key, value in overrides.items():
    if isinstance(value, dict):
      config[key].update(value)
    else:
      config[key] = value
  return config


def train_quietly(config, workdir):
  """`train_and_evaluate` with its console lines swallowed: (state, history)."""
  with contextlib.redirect_stdout(io.StringIO()):
    from ncf_jax import train  # pylint: disable=g-import-not-at-top
    return train.train_and_evaluate(config, str(workdir))


def read_records(workdir) -> list[dict]:
  from ncf_jax import run_dir  # pylint: disable=g-import-not-at-top
  return run_dir.RunDir(str(workdir)).read_metrics()


def numbers(workdir) -> list[tuple]:
  """What a run computed, per epoch (no timings)."""
  return [(r['epoch'], r['step'], r['loss'], r['hr'], r['ndcg']) for r in read_records(workdir)]


def run_module(module: str, *args: str, cwd=ROOT, env=None, timeout: float = 300,
               **popen) -> subprocess.CompletedProcess:
  """`python -m module args...` as a user runs it, output captured; `env` adds variables
  (XLA_FLAGS are added to the session's)."""
  env = dict(env or {})
  if 'XLA_FLAGS' in env:
    env['XLA_FLAGS'] = f"{os.environ['XLA_FLAGS']} {env['XLA_FLAGS']}"
  # glibc reports heap corruption on /dev/tty unless told otherwise: a child has none.
  env = dict(os.environ, JAX_NUMPY_RANK_PROMOTION='raise', LIBC_FATAL_STDERR_='1', **env)
  return subprocess.run([sys.executable, '-m', module, *args], cwd=str(cwd), env=env,
                        capture_output=True, text=True, timeout=timeout, check=False, **popen)


@contextlib.contextmanager
def entry_flags(define):
  """`define`'s flags for the block only (absl's registry is global to the process)."""
  before = set(flags.FLAGS)
  if define is not None:
    define()
  try:
    yield
  finally:
    for name in set(flags.FLAGS) - before:
      delattr(flags.FLAGS, name)


# Entry points run in this process by `run_entry`: (module, its flag definer, its positional
# arguments, what its interrupt line adds), as each module's `cli.run(...)` line has them.
_ENTRIES = {
    'ncf_jax.main': ('ncf_jax.main', 'define_flags', 0, cli.RESUMES_NOTE),
    'ncf_jax.recommend': ('ncf_jax.recommend', 'define_flags', 0, ''),
    'ncf_jax.benchmark': ('ncf_jax.benchmark', 'define_flags', 0, ''),
    'experiments.reproduce': ('experiments.reproduce', 'define_flags', 0, cli.RESUMES_NOTE),
    'experiments.plots': ('experiments.plots', '_define_flags', 0, ''),
}


def run_entry(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
  """`python -m module args...` in this process, as `cli.run` runs it (its flags defined for
  the call and removed after it, flags parsed, `main` run, any failure made its one line) but
  without ending the process: the exit code, stdout, and stderr ending in that line. For
  tests where the process boundary is not what is tested (`run_module` where it is)."""
  name, define, max_args, note = _ENTRIES[module]
  entry = importlib.import_module(name)
  # ml_collections loads every config file as module `config_config` into the same module
  # object: a name one file defined would outlive it in this process.
  sys.modules.pop('config_config', None)
  argv = [module, *args]
  saved_argv, saved_cwd = sys.argv, os.getcwd()
  out, err = io.StringIO(), io.StringIO()
  sys.argv = argv  # ml_collections reads the config overrides from sys.argv
  try:
    if cwd is not None:
      os.chdir(cwd)
    with entry_flags(getattr(entry, define)), contextlib.redirect_stdout(out), \
        contextlib.redirect_stderr(err):
      code, line = cli.run_in_process(entry.main, argv, max_args, note)
  finally:
    sys.argv = saved_argv
    os.chdir(saved_cwd)
    flags.FLAGS.unparse_flags()
  stderr = err.getvalue() + (line + '\n' if line is not None else '')
  result = subprocess.CompletedProcess(argv, code, out.getvalue(), stderr)
  result.line = line  # the one line of a failure, None on success
  return result


def child_output(result: subprocess.CompletedProcess) -> str:
  """What to show when a child process failed: its stdout's end and stderr's end, and where
  it died natively (SIGABRT, SIGSEGV) the fatal error and stacks Python printed before the
  list of extension modules that would otherwise fill the tail."""
  stderr = result.stderr
  fatal = stderr.find('Fatal Python error')
  native = [line for line in stderr.splitlines()
            if line[:1] in 'FE' and line[1:5].isdigit() or 'Check failed' in line
            or 'Termination timeout' in line]
  if fatal >= 0:  # with what was printed just before it (std::terminate's reason)
    modules = stderr.find('Extension modules', fatal)
    stderr = stderr[max(0, fatal - 1500):modules if modules >= 0 else None][:7500]
  else:
    stderr = stderr[-3000:]
  return '\n'.join([f'exit {result.returncode}', result.stdout[-3000:], *native[-20:], stderr])


# Every check that needs 8 devices, in one child process (one start of Python and JAX).
EIGHT_DEVICE_CHECKS = ('tests/multi_device_checks.py', 'tests/row_sharded_mesh_checks.py',
                       'tests/checkpoint_shard_checks.py')


def run_checks_on_8_devices(checks_files, timeout: float) -> None:
  """Runs `checks_files` (tests/...) in one pytest process of 8 forced CPU devices and asserts
  every check in them passed (none skipped).

  A child killed by a signal is run again, at most twice, with a warning carrying its
  fatal-error report; a check that fails is never retried. (XLA's CPU runtime can deadlock
  an all-reduce on a mesh of 6 of the 8 forced devices under load and then abort: seen in 2
  of 8 full-suite runs on 2026-12-01; README, "A caveat of forced CPU devices".)"""
  # Without pytest's log capture, XLA's own messages (a stuck rendezvous) reach stderr.
  run = lambda: run_module('pytest', '-q', '-p', 'no:cacheprovider', '-p', 'no:logging',
                           *checks_files, timeout=timeout,
                           env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
                                # Its programs are its own (8 devices): writing them to the
                                # shared cache cost more than it saves.
                                'JAX_ENABLE_COMPILATION_CACHE': 'false'})
  result = run()
  for _ in range(2):
    if result.returncode >= 0:
      break
    warnings.warn(f'{checks_files}: the child died (signal {-result.returncode}); running it '
                  f'again. Its report:\n{child_output(result)}')
    result = run()
  assert result.returncode == 0, child_output(result)
  summary = result.stdout.strip().splitlines()[-1]
  assert ' passed' in summary and 'skipped' not in summary and 'failed' not in summary, summary


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
  """The `error:` lines of a failed command, after checking it failed without a traceback."""
  assert result.returncode != 0, result.stdout
  assert 'Traceback' not in result.stderr, result.stderr
  return [line for line in result.stderr.splitlines() if line.startswith('error:')]


def write_ncf_dir(dataset, directory, negatives_format: str = 'text') -> None:
  """`dataset` as NCF files in `directory` (the files `data prepare` stages), for tests that
  read them back."""
  from ncf_jax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  from ncf_jax.data import files  # pylint: disable=g-import-not-at-top
  with files.StagedFiles(str(directory)) as staged:
    dataset_lib.stage_ncf_files(staged, dataset, negatives_format)
    staged.commit()


# The files whose tests take longest (processes of their own, many epochs; measured with
# --durations on 2026-12-01), longest first: with `--dist=loadfile` (pyproject.toml) each
# pytest-xdist worker takes the next whole file when it is nearly done, in collection order,
# so the long files start early, the short ones fill the gaps at the end, and the workers
# finish together. The other files keep their order after these.
LONG_FIRST = ('test_many_devices.py', 'test_resume.py', 'test_signals.py', 'test_optimizers.py',
              'test_train.py', 'test_models.py', 'test_provenance.py', 'test_mlperf.py',
              'test_pretrain.py', 'test_main.py', 'test_run_folder_faults.py',
              'test_recommend_many.py', 'test_recommend.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


def free_port() -> int:
  """A free TCP port on 127.0.0.1 (multi-process tests talk only to this machine)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
