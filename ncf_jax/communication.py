"""What a compiled train step sends between devices, read from its HLO (compile only: nothing
is allocated, so tables of any size can be measured on forced CPU devices).

`collectives(hlo_text)` lists every collective instruction (all-to-all, all-gather,
all-reduce, reduce-scatter, collective-permute, their async `-start` forms) with the bytes
of its operands, and which branch of `row_sharded`'s `lax.cond`s (the lookups', the
updates') it sits in: `fast` (the capacity-C path), `fallback` (the exact path) or `always`.
"""

import re

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

COLLECTIVES = ('all-to-all', 'all-gather', 'all-reduce', 'reduce-scatter', 'collective-permute')
DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'bf16': 2, 'f16': 2, 's32': 4,
               'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
_SHAPE = re.compile(r'\b(pred|[subf]\d+|bf16)\[([\d,]*)\]')
_INSTRUCTION = re.compile(r'=\s*(.*?)\s(' + '|'.join(COLLECTIVES) + r')(?:-start)?\(')
_GROUPS = re.compile(r'replica_groups=\{\{([\d,]*)\}')


def shape_bytes(text: str) -> int:
  """Bytes of every array shape written in `text` (e.g. '(f32[4,64]{1,0}, s32[4])')."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    total += DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(',') if d] or [1]))
  return total


def collectives(hlo: str) -> list[dict]:
  """[{kind, bytes (of its operands), result, path}] of every collective in `hlo`.

  Compiled HLO prints the result's shape, not the operands': operand bytes are the result's
  for all-to-all, all-reduce and collective-permute, 1/group of it for all-gather and
  group times it for reduce-scatter. `path`: `fast` or `fallback` inside the branches of
  `row_sharded`'s `lax.cond`s (read from the op's metadata), else `always`.
  """
  out = []
  for line in hlo.splitlines():
    match = _INSTRUCTION.search(line)
    if not match or 'done(' in line.split('=', 1)[1][:40]:
      continue
    result, kind = match.group(1), match.group(2)
    groups = _GROUPS.search(line)
    group = len(groups.group(1).split(',')) if groups and groups.group(1) else 1
    nbytes = shape_bytes(result)
    if kind == 'all-gather':
      nbytes //= group
    elif kind == 'reduce-scatter':
      nbytes *= group
    path = ('fast' if 'cond/branch_0_fun' in line else
            'fallback' if 'cond/branch_1_fun' in line else 'always')
    out.append(dict(kind=kind, bytes=nbytes, result=result.split('{')[0] if '(' not in result
                    else result, path=path))
  return out


def program_all_to_all_types(stablehlo: str) -> list[str]:
  """Element types of the all-to-alls the program asks for (lowered StableHLO, before XLA's
  passes: the CPU compiler widens bfloat16 collectives to float32, accelerators need not)."""
  return re.findall(r'stablehlo\.all_to_all.*->\s*tensor<[\dx]*x(\w+)>', stablehlo)


def summarize(listed: list[dict]) -> dict:
  """Per-step bytes per device on the path a step takes: without overflow (`fast` and
  `always`), and on the exact fallback."""
  usual = sum(c['bytes'] for c in listed if c['path'] != 'fallback')
  exact = sum(c['bytes'] for c in listed if c['path'] != 'fast')
  return dict(collective_bytes_per_step_per_device=usual,
              fallback_collective_bytes_per_step_per_device=exact)


def lower_train_step(config, num_users: int, num_items: int, num_devices: int, devices=None):
  """One train step of `config` on `num_devices` devices, lowered (not compiled) over abstract
  arguments: (lowered, model, abstract state, state shardings); nothing is allocated."""
  from ncf_jax import models, optimizers, row_sharded, sharding  # pylint: disable=g-import-not-at-top
  from ncf_jax import run_settings, train_step  # pylint: disable=g-import-not-at-top
  devices = devices if devices is not None else jax.devices()
  layout = sharding.Layout(Mesh(np.array(devices[:num_devices]), (sharding.DATA,)),
                           config.embedding_sharding)
  model = models.create_model(run_settings.model_settings(config), num_users, num_items,
                              num_devices)
  optimizer = optimizers.create_optimizer(run_settings.optimizer_settings(config))
  specs = model.table_specs()
  abstract = train_step.abstract_state(model, optimizer)
  shardings = layout.state_shardings(abstract, specs)
  regularization = run_settings.regularization(config)
  batch_sharding = NamedSharding(layout.mesh, P(sharding.DATA))
  batch = {k: jax.ShapeDtypeStruct((config.batch_size,), jnp.int32 if k in ('users', 'items')
                                   else jnp.float32, sharding=batch_sharding)
           for k in ('users', 'items', 'labels', 'weights')}
  if row_sharded.has_row_sharded(specs):
    step = row_sharded.make_step(model, optimizer, regularization, layout, shardings)
  else:
    step = jax.jit(train_step.make_train_step(model, optimizer, regularization),
                   in_shardings=(shardings, batch_sharding),
                   out_shardings=(shardings, layout.replicated))
  state = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return step.lower(state, batch), model, abstract, shardings


def measure_train_step(config, num_users: int, num_items: int, num_devices: int,
                       devices=None, init_memory: bool = False) -> dict:
  """The collectives of one compiled train step of `config` on `num_devices` devices and the
  bytes of tables (and their optimizer state) each device holds; nothing is allocated.
  With `init_memory`, also the compiled temporary bytes of the sharded initialisation."""
  lowered, model, abstract, shardings = lower_train_step(config, num_users, num_items,
                                                         num_devices, devices)
  specs = model.table_specs()
  listed = collectives(lowered.compile().as_text())
  table_paths = [spec.path for spec in specs]

  def local_bytes(tree, shardings_tree, tables_only):
    total = 0
    for (path, leaf), sharding_ in zip(jax.tree_util.tree_leaves_with_path(tree),
                                       jax.tree_util.tree_leaves(shardings_tree)):
      names = tuple(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', None))) for k in path)
      is_table = any(names[i:i + len(t)] == t for t in table_paths
                     for i in range(len(names) - len(t) + 1))
      if is_table or not tables_only:
        shape = sharding_.shard_shape(leaf.shape)
        total += int(np.prod(shape)) * np.dtype(leaf.dtype).itemsize
    return total

  out = dict(summarize(listed), collectives=listed,
             program_all_to_all_types=program_all_to_all_types(lowered.as_text()),
             table_bytes_per_device=local_bytes(abstract['params'], shardings['params'], True),
             padded_table_bytes=sum(spec.nbytes for spec in specs),
             table_and_optimizer_bytes_per_device=local_bytes(abstract, shardings, True),
             state_bytes_per_device=local_bytes(abstract, shardings, False),
             tables=[dict(name=spec.name, rows=spec.rows, padded_rows=spec.shape[0],
                          width=spec.width, placement=spec.placement) for spec in specs])
  if init_memory:
    out['init_temp_bytes_per_device'] = init_temp_bytes(model, config, shardings['params'])
  return out


def init_temp_bytes(model, config, shardings) -> int:
  """Compiled temporary bytes per device of the sharded initialisation of the params."""
  from ncf_jax import models  # pylint: disable=g-import-not-at-top
  init = jax.jit(lambda: models.init_params(model, config.seed), out_shardings=shardings)
  mesh = jax.tree_util.tree_leaves(shardings)[0].mesh
  with jax.set_mesh(mesh):  # as train.init_state: each device draws its own rows
    return int(init.lower().compile().memory_analysis().temp_size_in_bytes)


def measure_full_ranking(config, num_users: int, num_items: int, num_devices: int,
                         heldout_users: int, devices=None, routed: bool = True) -> dict:
  """The collectives of the compiled full-ranking evaluation of `heldout_users` users (one
  held-out item each, a few known pairs) with tables planned for `num_devices` devices;
  compile only. `routed=False` compiles the plain program over the same sharded tables (what
  `rows` ran before it was routed: XLA gathers the tables). Per-block collectives repeat
  once per block of users (`lax.map`), so `per_evaluation` multiplies them by the blocks."""
  from ncf_jax import evaluation, models, sharding  # pylint: disable=g-import-not-at-top
  from ncf_jax import run_settings  # pylint: disable=g-import-not-at-top
  from ncf_jax.data.dataset import HeldOut  # pylint: disable=g-import-not-at-top
  devices = devices if devices is not None else jax.devices()
  layout = sharding.Layout(Mesh(np.array(devices[:num_devices]), (sharding.DATA,)),
                           config.embedding_sharding)
  model = models.create_model(run_settings.model_settings(config), num_users, num_items,
                              num_devices)
  rng = np.random.default_rng(0)
  users = rng.choice(num_users, heldout_users, replace=False).astype(np.int32)
  heldout = HeldOut(users, rng.integers(0, num_items, heldout_users).astype(np.int32),
                    np.zeros((heldout_users, 1), np.int32))
  evaluator = evaluation.FullRankingEvaluator(model, heldout, users[:100],
                                              rng.integers(0, num_items, min(100, len(users)))
                                              .astype(np.int32), num_items, layout=layout)
  abstract = models.abstract_params(model)
  shardings = layout.state_shardings(abstract, model.table_specs())
  params = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  plain = evaluation._full_ranking_program  # pylint: disable=protected-access
  program = None if routed else plain(model, num_items, evaluator.users_per_block,
                                      evaluator.window, layout)
  listed = collectives(evaluator.lower(params, program).compile().as_text())
  blocks = -(-heldout_users // evaluator.users_per_block)
  return dict(routed=routed, num_devices=num_devices, heldout_users=heldout_users,
              blocks=blocks, users_per_block=evaluator.users_per_block, collectives=listed,
              largest_collective_bytes=max((c['bytes'] for c in listed), default=0),
              table_bytes=sum(spec.nbytes for spec in model.table_specs()))
