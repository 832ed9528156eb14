"""Joining a run of several processes: `jax.distributed.initialize`'s arguments from the flags
or the cluster's environment, every mistake one line before any work, and a pre-flight
rendezvous so that a missing coordinator or peer is one line too.

Where the arguments come from (`settings`):
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   named by hand
  --hosts=H0,H1,... [--process_id=I] [--coordinator_port=P]         an explicit host list: the
      coordinator is H0; each process is the index of its host name in the list, unless
      --process_id says (needed when one host runs several processes)
  --distributed                                                      the cluster's environment:
      Slurm (one task per node: the node's GPUs; one task per GPU: its own GPU), a TPU pod
      slice (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES and TPU_WORKER_ID), else JAX's own
      detection (a Cloud TPU VM's metadata, Open MPI)

Why a pre-flight: `jax.distributed.initialize` (jax 0.10.2) waits for the coordinator and the
peers up to `initialization_timeout` and then aborts the process from C++ (exit 134, a
29-line fatal log; a shorter timeout aborts the same way). So before calling it, process 0
listens on the coordinator's port and the others connect and say who they are; when all have
come, process 0 closes that socket, tells them, and everyone calls initialize (the service
then binds the same port). If the coordinator or a peer does not come within the timeout,
each waiting process ends with one line naming the coordinator and the missing processes.
"""

import dataclasses
import os
import re
import socket
import struct
import time

from absl import flags

from ncf_jax import interrupts
from ncf_jax.errors import NcfError

DEFAULT_TIMEOUT = 300  # seconds, jax.distributed.initialize's own default
DEFAULT_HOSTS_PORT = 12345
SLURM_PORT_BASE = 65535 - 2**12 + 1  # JAX's Slurm rule: this + job id % 4096
TPU_PORT = 8482  # JAX's coordinator port on Cloud TPU

_MAGIC = b'ncfjax01'  # the rendezvous' first bytes: a stray connection is not a peer


class LaunchError(NcfError):
  """The flags or the environment do not describe a run of several processes that can start."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """`jax.distributed.initialize`'s arguments, and where they came from."""
  coordinator_address: str
  num_processes: int
  process_id: int
  local_device_ids: tuple[int, ...] | None = None  # None: every device this process sees
  source: str = 'flags'

  def initialize_kwargs(self) -> dict:
    return dict(coordinator_address=self.coordinator_address, num_processes=self.num_processes,
                process_id=self.process_id,
                local_device_ids=(list(self.local_device_ids)
                                  if self.local_device_ids is not None else None))


def define_flags() -> None:
  """The flags of a run over several processes (hosts)."""
  flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for a run of '
                      'several processes (with --num_processes and --process_id).')
  flags.DEFINE_integer('num_processes', None, 'Processes in the run (with --coordinator_address).')
  flags.DEFINE_integer('process_id', None, 'This process (0 .. num_processes-1).')
  flags.DEFINE_list('hosts', None, 'An explicit host list H0,H1,...: one process per host, '
                    'process 0 (the coordinator) on H0; the same command on every host.')
  flags.DEFINE_integer('coordinator_port', None, 'The coordinator\'s port with --hosts '
                       f'(default {DEFAULT_HOSTS_PORT}) or --distributed (default: JAX\'s rule).')
  flags.DEFINE_bool('distributed', False, 'Take the run\'s processes from the cluster\'s '
                    'environment: Slurm, a TPU pod slice (else JAX\'s detection: Cloud TPU VM '
                    'metadata, Open MPI).')
  flags.DEFINE_integer('initialization_timeout', DEFAULT_TIMEOUT, 'Seconds to wait for the '
                       'coordinator and every process before giving up with one line.')


# ---------------------------------------------------------------------------------------------
# Parsing (pure functions of flag values and an environment dict: tested with faked ones).


def check_address(address: str, flag: str = '--coordinator_address') -> tuple[str, int]:
  """(host, port) of HOST:PORT, or LaunchError."""
  host, sep, port = address.rpartition(':')
  if not sep or not host:
    raise LaunchError(f'{flag}={address}: needs HOST:PORT (e.g. {address or "host0"}:12345)')
  if not port.isdigit() or not 0 < int(port) < 65536:
    raise LaunchError(f'{flag}={address}: the port must be a number in 1..65535')
  return host.strip('[]'), int(port)


def _check_process(process_id: int | None, num_processes: int, where: str) -> None:
  if num_processes < 1:
    raise LaunchError(f'{where}: --num_processes={num_processes} must be at least 1')
  if process_id is None:
    raise LaunchError(f'{where}: needs --process_id (0 .. {num_processes - 1})')
  if not 0 <= process_id < num_processes:
    raise LaunchError(f'--process_id={process_id} must be in 0 .. {num_processes - 1} '
                      f'(--num_processes={num_processes})')


def expand_hostlist(hostlist: str) -> list[str]:
  """Slurm's compressed host list ('node[001-003,007],gpu5') as names, in order."""
  names = []
  for item in re.findall(r'[^,\[]+(?:\[[^\]]*\][^,\[]*)*', hostlist):
    match = re.fullmatch(r'([^\[]*)\[([^\]]*)\](.*)', item)
    if match is None:
      names.append(item)
      continue
    prefix, ranges, suffix = match.groups()
    for part in ranges.split(','):
      first, _, last = part.partition('-')
      for n in range(int(first), int(last or first) + 1):
        names.extend(f'{prefix}{n:0{len(first)}d}{rest}' for rest in expand_hostlist(suffix)
                     or [''])
  return names


def _tasks_on_node(env: dict, node: int) -> int:
  """Tasks of this job step on node `node`: SLURM_STEP_TASKS_PER_NODE ('2(x3),1'),
  else SLURM_TASKS_PER_NODE, else SLURM_NTASKS_PER_NODE."""
  spec = env.get('SLURM_STEP_TASKS_PER_NODE') or env.get('SLURM_TASKS_PER_NODE')
  if spec:
    counts = []
    for part in spec.split(','):
      match = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', part.strip())
      if match is None:
        raise LaunchError(f'Slurm: cannot read SLURM_STEP_TASKS_PER_NODE={spec}')
      counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[min(node, len(counts) - 1)]
  return int(env.get('SLURM_NTASKS_PER_NODE', 1))


def _visible_gpus(env: dict) -> int | None:
  """GPUs this task sees: CUDA_VISIBLE_DEVICES (Slurm sets it), else SLURM_GPUS_ON_NODE."""
  visible = env.get('CUDA_VISIBLE_DEVICES')
  if visible is not None:
    return len([d for d in visible.split(',') if d.strip()])
  return int(env['SLURM_GPUS_ON_NODE']) if env.get('SLURM_GPUS_ON_NODE') else None


def slurm_settings(env: dict, port: int | None = None) -> Settings:
  """From a Slurm job step. One task per node: the task takes every GPU of its node (jax's own
  detection would limit it to the GPU of its local rank). Several tasks per node: each takes
  its share of the node's GPUs by local rank, unless Slurm already bound each task to its own
  (CUDA_VISIBLE_DEVICES listing fewer than the node's GPUs)."""
  try:
    num_processes = int(env['SLURM_NTASKS'])
    process_id = int(env['SLURM_PROCID'])
    local_rank = int(env.get('SLURM_LOCALID', 0))
    node = int(env.get('SLURM_NODEID', 0))
    nodes = expand_hostlist(env.get('SLURM_STEP_NODELIST') or env['SLURM_JOB_NODELIST'])
    job = int(env['SLURM_JOB_ID'])
  except (KeyError, ValueError) as e:
    raise LaunchError(f'Slurm: cannot read the job\'s environment ({e})') from None
  _check_process(process_id, num_processes, 'Slurm')
  port = port or int(env.get('JAX_COORDINATOR_PORT') or job % 2**12 + SLURM_PORT_BASE)
  tasks = _tasks_on_node(env, node)
  local = None
  if tasks > 1:
    visible, on_node = _visible_gpus(env), env.get('SLURM_GPUS_ON_NODE')
    bound = visible is not None and on_node and visible < int(on_node)
    if visible is None:
      local = (local_rank,)  # as jax would: one device per task
    elif not bound:
      if visible % tasks:
        raise LaunchError(f'Slurm: {tasks} tasks on this node cannot share {visible} GPUs '
                          'evenly; use --ntasks-per-node=1 or one task per GPU')
      share = visible // tasks
      local = tuple(range(local_rank * share, (local_rank + 1) * share))
  return Settings(f'{nodes[0]}:{port}', num_processes, process_id, local, 'slurm')


def tpu_settings(env: dict, port: int | None = None) -> Settings:
  """From a TPU pod slice's environment (GKE, or set by hand on TPU VMs): the workers'
  addresses in TPU_WORKER_HOSTNAMES (or TPU_PROCESS_ADDRESSES), this one's index in
  TPU_WORKER_ID, several slices via MEGASCALE_*. Every process takes all its host's chips."""
  workers = [w.strip() for w in (env.get('TPU_PROCESS_ADDRESSES')
                                 or env['TPU_WORKER_HOSTNAMES']).split(',') if w.strip()]
  try:
    worker = int(env['TPU_WORKER_ID'])
    slices = int(env.get('MEGASCALE_NUM_SLICES') or 1)
    slice_id = int(env.get('MEGASCALE_SLICE_ID') or 0)
  except (KeyError, ValueError) as e:
    raise LaunchError(f'TPU: cannot read the slice\'s environment ({e})') from None
  if not 0 <= worker < len(workers):
    raise LaunchError(f'TPU: TPU_WORKER_ID={worker} is not an index of the {len(workers)} '
                      'workers in TPU_WORKER_HOSTNAMES')
  coordinator = (env.get('MEGASCALE_COORDINATOR_ADDRESS') or workers[0]).split(':')[0]
  return Settings(f'{coordinator}:{port or TPU_PORT}', len(workers) * slices,
                  slice_id * len(workers) + worker, None, 'tpu')


def hosts_settings(hosts: list[str], process_id: int | None, port: int | None,
                   hostname: str) -> Settings:
  """From an explicit host list: one process per host unless --process_id says otherwise."""
  hosts = [h.strip() for h in hosts if h.strip()]
  if not hosts:
    raise LaunchError('--hosts is empty')
  if process_id is None:
    short = hostname.split('.')[0]
    matches = [i for i, h in enumerate(hosts) if h in (hostname, short)]
    if len(matches) != 1:
      raise LaunchError(f'--hosts: this host ({hostname}) is '
                        + ('listed more than once' if matches else 'not in the list')
                        + '; give --process_id')
    process_id = matches[0]
  _check_process(process_id, len(hosts), '--hosts')
  return Settings(f'{hosts[0]}:{port or DEFAULT_HOSTS_PORT}', len(hosts), process_id, None,
                  'hosts')


def cluster_in(env: dict) -> str | None:
  """Which cluster environment `env` describes: 'slurm', 'tpu', 'jax' (one JAX detects by
  itself: Open MPI, a Cloud TPU VM) or None."""
  if all(k in env for k in ('SLURM_JOB_ID', 'SLURM_NTASKS', 'SLURM_PROCID')) and (
      'SLURM_STEP_NODELIST' in env or 'SLURM_JOB_NODELIST' in env):
    return 'slurm'
  if ('TPU_WORKER_HOSTNAMES' in env or 'TPU_PROCESS_ADDRESSES' in env) and 'TPU_WORKER_ID' in env:
    return 'tpu'
  if 'OMPI_MCA_orte_hnp_uri' in env or 'OMPI_COMM_WORLD_SIZE' in env:
    return 'jax'
  if os.path.exists('/dev/accel0') or os.path.exists('/dev/vfio/0'):  # a Cloud TPU VM
    return 'jax'
  return None


def settings(values, env: dict | None = None, hostname: str | None = None
             ) -> Settings | str | None:
  """The run's Settings from flag values (anything with the flags' attribute names), None for
  one process, or 'jax' where JAX's own detection is to be trusted. LaunchError names the
  first mistake."""
  env = os.environ if env is None else env
  address, num, pid = values.coordinator_address, values.num_processes, values.process_id
  hosts, port = values.hosts, values.coordinator_port
  if values.initialization_timeout is not None and values.initialization_timeout <= 0:
    raise LaunchError(f'--initialization_timeout={values.initialization_timeout} must be positive')
  if port is not None and not 0 < port < 65536:
    raise LaunchError(f'--coordinator_port={port}: must be in 1..65535')
  chosen = [name for name, given in (('--coordinator_address', address is not None),
                                     ('--hosts', hosts is not None),
                                     ('--distributed', values.distributed)) if given]
  if len(chosen) > 1:
    raise LaunchError(f'{" and ".join(chosen)}: give one way of naming the processes')
  if address is not None:
    check_address(address)
    if port is not None:
      raise LaunchError('--coordinator_port: the port is already in --coordinator_address')
    if num is None:
      raise LaunchError('--coordinator_address needs --num_processes and --process_id')
    _check_process(pid, num, '--coordinator_address')
    return Settings(address, num, pid)
  if hosts is not None:
    if num is not None:
      raise LaunchError('--hosts: the number of processes is the number of hosts; drop '
                        '--num_processes')
    return hosts_settings(hosts, pid, port, hostname or socket.gethostname())
  if num is not None or pid is not None:
    flag = '--num_processes' if num is not None else '--process_id'
    raise LaunchError(f'{flag} needs --coordinator_address (or --hosts): without a coordinator '
                      'the run would be one process')
  if values.distributed:
    kind = cluster_in(env)
    if kind is None:
      raise LaunchError('--distributed: no cluster found in the environment (Slurm, a TPU pod '
                        'slice, Open MPI); name the processes with --coordinator_address, '
                        '--num_processes and --process_id, or --hosts')
    if kind == 'slurm':
      return slurm_settings(env, port)
    if kind == 'tpu':
      return tpu_settings(env, port)
    return 'jax'
  return None


# ---------------------------------------------------------------------------------------------
# The pre-flight rendezvous (process 0 listens, the others report), then initialize.


def _loopback(host: str) -> bool:
  return host in ('localhost', '::1') or host.startswith('127.')


def _send(conn: socket.socket, *numbers: int) -> None:
  conn.sendall(_MAGIC + struct.pack(f'!{len(numbers)}q', *numbers))


def _receive(conn: socket.socket, count: int) -> tuple[int, ...] | None:
  size = len(_MAGIC) + 8 * count
  data = b''
  while len(data) < size:
    chunk = conn.recv(size - len(data))
    if not chunk:
      return None
    data += chunk
  if not data.startswith(_MAGIC):
    return None
  return struct.unpack(f'!{count}q', data[len(_MAGIC):])


def _missing_line(settings_: Settings, missing: list[int], waited: float) -> str:
  names = ', '.join(str(i) for i in missing)
  return (f'coordinator {settings_.coordinator_address}: process(es) {names} of '
          f'{settings_.num_processes} did not come within {waited:.0f} s '
          '(--initialization_timeout); start every process with the same '
          '--coordinator_address and --num_processes')


def _gather_peers(settings_: Settings, timeout: float) -> None:
  """Process 0: waits until every other process has connected, then releases them."""
  host, port = check_address(settings_.coordinator_address)
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    server.bind(('127.0.0.1' if _loopback(host) else '', port))
  except OSError as e:
    server.close()
    raise LaunchError(f'coordinator {settings_.coordinator_address}: cannot listen on port '
                      f'{port} ({e.strerror})') from None
  server.listen(settings_.num_processes)
  server.settimeout(0.2)
  peers: dict[int, socket.socket] = {}
  deadline = time.monotonic() + timeout
  try:
    while len(peers) < settings_.num_processes - 1:
      interrupts.check()
      if time.monotonic() > deadline:
        missing = [i for i in range(1, settings_.num_processes) if i not in peers]
        for conn in peers.values():
          _send(conn, 0)  # 0: the run does not start
        raise LaunchError(_missing_line(settings_, missing, timeout))
      try:
        conn, _ = server.accept()
      except socket.timeout:
        continue
      conn.settimeout(5)
      try:
        hello = _receive(conn, 2)
      except OSError:
        hello = None
      if hello is None:
        conn.close()
        continue
      pid, num = hello
      if num != settings_.num_processes or pid in peers or not 0 < pid < num:
        _send(conn, 2)  # 2: refused (the peer says why)
        conn.close()
        why = (f'--num_processes={num}' if num != settings_.num_processes
               else f'--process_id={pid} twice' if pid in peers else f'--process_id={pid}')
        raise LaunchError(f'coordinator {settings_.coordinator_address}: a process came with '
                          f'{why}, this one has --num_processes={settings_.num_processes}')
      peers[pid] = conn
    server.close()  # the coordination service binds this port next
    for conn in peers.values():
      _send(conn, 1)  # 1: go
    for conn in peers.values():  # they close first, so no TIME_WAIT lingers on the port here
      conn.settimeout(5)
      try:
        conn.recv(1)
      except OSError:
        pass
  finally:
    server.close()
    for conn in peers.values():
      conn.close()


def _report_to_coordinator(settings_: Settings, timeout: float) -> None:
  """Any other process: connects to process 0 (retrying until the deadline), says who it is,
  and waits for the word to go."""
  host, port = check_address(settings_.coordinator_address)
  deadline = time.monotonic() + timeout
  where = f'process {settings_.process_id} of {settings_.num_processes}'
  while True:
    interrupts.check()
    try:
      conn = socket.create_connection((host, port), timeout=2)
      break
    except OSError:
      if time.monotonic() > deadline:
        raise LaunchError(f'coordinator {settings_.coordinator_address}: nothing answered within '
                          f'{timeout:.0f} s (--initialization_timeout), this is {where}; '
                          'start process 0 there first, with the same --num_processes') from None
      time.sleep(0.5)
  with conn:
    _send(conn, settings_.process_id, settings_.num_processes)
    conn.settimeout(1)
    while True:
      interrupts.check()
      try:
        answer = _receive(conn, 1)
        break
      except socket.timeout:
        if time.monotonic() > deadline + 5:
          answer = None
          break
      except OSError:
        answer = None
        break
  if answer != (1,):
    what = {(0,): 'gave up waiting for the other processes',
            (2,): 'refused this process (another --num_processes or a repeated --process_id)'
            }.get(answer, 'closed the connection')
    raise LaunchError(f'coordinator {settings_.coordinator_address}: process 0 {what}; this is '
                      f'{where}')


def preflight(settings_: Settings, timeout: float) -> None:
  """Returns once every process of the run is there; LaunchError (one line) otherwise."""
  if settings_.num_processes == 1:
    return
  if settings_.process_id == 0:
    _gather_peers(settings_, timeout)
  else:
    _report_to_coordinator(settings_, timeout)


def initialize(settings_: Settings | str | None, timeout: float = DEFAULT_TIMEOUT) -> None:
  """Joins the run `settings_` describes (nothing for None), before any other JAX call."""
  if settings_ is None:
    return
  if settings_ != 'jax':
    preflight(settings_, timeout)
  import jax  # pylint: disable=g-import-not-at-top
  # CPU devices of several processes talk through gloo; accelerators ignore this setting.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if settings_ == 'jax':
    jax.distributed.initialize(initialization_timeout=int(timeout))
  else:
    jax.distributed.initialize(**settings_.initialize_kwargs(),
                               initialization_timeout=int(timeout))
  interrupts.check()


def initialize_from_flags() -> None:
  """The command line's run of several processes, if it asks for one."""
  values = flags.FLAGS
  initialize(settings(values), values.initialization_timeout)
