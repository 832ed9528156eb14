"""Two processes (jax.distributed on 127.0.0.1) each make their columns of the global batches,
with the host executor and the device executor; side by side, they are the one-process
epoch laid out by hand from `epoch.host_examples`."""

import os
import subprocess
import sys

import numpy as np

from conftest import free_port
from test_batch_source import NAMES, _definition, _reference

SEED, BATCH, STEPS_PER_CHUNK, EPOCHS = 4, 64, 2, (1, 2)

# One process of two: its own columns of every batch of EPOCHS from both executors (the
# device executor's on the first and the last chunk), saved as OUT/process<i>.npz.
_PROCESS = r'''
import sys
tests, address, process_id, out = sys.argv[1:]
sys.path.insert(0, tests)
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.distributed.initialize(address, num_processes=2, process_id=int(process_id),
                           initialization_timeout=120)
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from test_two_process_batches import SEED, BATCH, STEPS_PER_CHUNK, EPOCHS
from test_batch_source import NAMES, _definition
from ncf_jax import batch_source, sharding
assert jax.process_count() == 2 and jax.device_count() == 2
layout = sharding.Layout(Mesh(np.array(jax.devices()), (sharding.DATA,)))
spec, arrays = _definition()
saved = {}
host = batch_source.HostBatches(spec, arrays, SEED, BATCH, STEPS_PER_CHUNK, layout, threads=2,
                                last_epoch=EPOCHS[-1])
for epoch in EPOCHS:
  chunks = list(host.local_chunks(epoch))
  for k in NAMES:  # (steps, B / 2): the real steps of each chunk, in order
    saved[f'host/{epoch}/{k}'] = np.concatenate([c[k][:n] for c, n in chunks])
host.close()
device = batch_source.DeviceBatches(spec, arrays, SEED, BATCH, STEPS_PER_CHUNK, layout)
columns = NamedSharding(layout.mesh, P(sharding.DATA))
select = jax.jit(device.select, in_shardings=(device.inputs_sharding(), None),
                 out_shardings={k: columns for k in NAMES})
for epoch in EPOCHS:
  for chunk, (inputs, num_steps) in enumerate(device.chunks(epoch)):
    if chunk in (0, device.num_chunks - 1):
      for i in range(num_steps):
        step = chunk * STEPS_PER_CHUNK + i
        for k, v in select(inputs, np.int32(i)).items():
          (shard,) = v.addressable_shards
          saved[f'device/{epoch}/{step}/{k}'] = np.asarray(shard.data)
np.savez(f'{out}/process{process_id}.npz', **saved)
print('saved', len(saved))
'''


def test_two_processes_make_the_one_process_batches(tmp_path):
  tests = os.path.dirname(os.path.abspath(__file__))
  address = f'127.0.0.1:{free_port()}'
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUMPY_RANK_PROMOTION='raise')
  processes = [subprocess.Popen([sys.executable, '-c', _PROCESS, tests, address, str(i),
                                 str(tmp_path)], cwd=os.path.dirname(tests), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in processes]
  for process, (_, err) in zip(processes, outputs):
    assert process.returncode == 0, err[-3000:]
  parts = [np.load(tmp_path / f'process{i}.npz') for i in range(2)]
  spec, arrays = _definition()
  device_steps = 0
  for epoch in EPOCHS:
    expected = _reference(spec, arrays, SEED, epoch, BATCH)
    for k in NAMES:
      both = np.concatenate([p[f'host/{epoch}/{k}'] for p in parts], axis=1)
      np.testing.assert_array_equal(both, expected[k], err_msg=f'host {epoch} {k}')
    for step in range(len(expected['users'])):
      if f'device/{epoch}/{step}/users' in parts[0]:
        device_steps += 1
        for k in NAMES:
          both = np.concatenate([p[f'device/{epoch}/{step}/{k}'] for p in parts])
          np.testing.assert_array_equal(both, expected[k][step], err_msg=f'device {epoch} {k}')
  assert device_steps == 2 * 2 * STEPS_PER_CHUNK - 2 * (len(expected['users']) % 2)
