"""What a checkpoint costs per epoch at ML-20M's table sizes (one process, this machine).

  python -m experiments.checkpoint_cost [--users=138493 --items=26744 --factors=64 --epochs=4]

A NeuMF-sized state of float32 tables (users x factors and items x factors) with Adam's two
moments. Prints the digest throughput (BLAKE2b over host copies of the shards), and per
epoch: the time the training thread spends in `save` (host copies, then Orbax's own copy),
the time until the checkpoint is durable (`finish_save`: Orbax's write, the digest worker,
the digest file), and the bytes written. One write per epoch whatever the best is.
"""

import os
import shutil
import tempfile
import time

from absl import flags
import jax
import numpy as np

from ncf_jax import checkpoints
from ncf_jax import cli
from ncf_jax import shard_digests

flags.DEFINE_integer('users', 138_493, 'User table rows (ML-20M).')
flags.DEFINE_integer('items', 26_744, 'Item table rows (ML-20M).')
flags.DEFINE_integer('factors', 64, 'Table width.')
flags.DEFINE_integer('epochs', 4, 'Saves to time.')
FLAGS = flags.FLAGS


def make_state(users: int, items: int, factors: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  table = lambda rows: rng.standard_normal((rows, factors), np.float32)
  params = dict(user_embedding=table(users), item_embedding=table(items))
  return jax.device_put(dict(step=np.int32(0), params=params,
                             opt=dict(mu=jax.tree_util.tree_map(np.copy, params),
                                      nu=jax.tree_util.tree_map(np.copy, params))))


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def main(argv: list[str]) -> None:
  del argv
  state = make_state(FLAGS.users, FLAGS.items, FLAGS.factors)
  state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
  print(f'state: {state_bytes / 1e6:.1f} MB ({FLAGS.users} + {FLAGS.items} rows x '
        f'{FLAGS.factors} float32, with Adam moments)')
  t0 = time.perf_counter()
  copies = shard_digests.host_copies(state, writer=True)
  t1 = time.perf_counter()
  shard_digests.digest(copies)
  t2 = time.perf_counter()
  print(f'host copies {t1 - t0:.3f} s; digests {t2 - t1:.3f} s '
        f'({state_bytes / (t2 - t1) / 1e9:.2f} GB/s, on the worker thread)')
  root = tempfile.mkdtemp(prefix='ncf_checkpoint_cost_')
  try:
    directory = checkpoints.CheckpointDir(os.path.join(root, 'latest'), writer=True)
    for epoch in range(FLAGS.epochs):
      t0 = time.perf_counter()
      directory.save(epoch, state, dict(epoch=epoch, step=0))
      t1 = time.perf_counter()
      directory.finish_save()
      t2 = time.perf_counter()
      print(f'epoch {epoch}: training thread {t1 - t0:.3f} s, durable after {t2 - t0:.3f} s, '
            f'{folder_bytes(directory.where(epoch)) / 1e6:.1f} MB written')
    directory.close()
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  cli.run(main)
