"""Many devices and many processes, on this CPU: every check that needs 8 devices
(`conftest.EIGHT_DEVICE_CHECKS`: multi_device_checks.py, row_sharded_mesh_checks.py,
checkpoint_shard_checks.py) in one process of 8 forced CPU devices, and a run of 2 processes
on 127.0.0.1 against the same run in this one."""

import os
import subprocess
import sys

import pytest

from conftest import EIGHT_DEVICE_CHECKS, ROOT, free_port, make_config, numbers, read_records
from conftest import run_checks_on_8_devices, train_quietly


def test_checks_on_eight_forced_cpu_devices():
  # The timeout only guards against a hang: on the shared 2-core machine at a load of 15 the
  # first of these files alone took 852 s (127 s of CPU).
  run_checks_on_8_devices(EIGHT_DEVICE_CHECKS, timeout=2400)


def test_two_processes_compute_what_one_process_does(tmp_path):
  common = ['-m', 'ncf_jax.main', '--config=configs/test.py', '--config.num_epochs=2']
  address = f'127.0.0.1:{free_port()}'
  env = dict(os.environ, JAX_NUMPY_RANK_PROMOTION='raise')
  processes = [subprocess.Popen([sys.executable, *common, f'--workdir={tmp_path / "two"}',
                                 f'--coordinator_address={address}', '--num_processes=2',
                                 f'--process_id={i}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(2)]
  # The reference, the same run in this process on one device, runs meanwhile (nothing is
  # timed): the same global batches, so the same numbers but for the order of the sums over
  # devices (one device against many: tests/multi_device_checks.py).
  train_quietly(make_config(num_epochs=2), tmp_path / 'one')
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (_, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
  assert 'best epoch' in outputs[0][0] and 'best epoch' not in outputs[1][0]  # one printer
  records = read_records(tmp_path / 'two')
  assert all(r['devices'] == 2 and r['processes'] == 2 for r in records)
  two, single = numbers(tmp_path / 'two'), numbers(tmp_path / 'one')
  assert [r[:2] for r in two] == [r[:2] for r in single]  # epochs and steps
  for a, b in zip(two, single):
    # Epoch 0 is evaluated before any training, so its loss is None in both runs: compare it
    # as such (pytest >= 9.2 refuses approx(None)), the numbers within float noise.
    assert (a[2] is None) == (b[2] is None), (a, b)
    if a[2] is not None:
      assert a[2] == pytest.approx(b[2], rel=1e-5)  # loss
    assert a[3:] == pytest.approx(b[3:], rel=1e-5)  # HR, NDCG
