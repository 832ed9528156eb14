"""Launching several processes (`ncf_jax/launch.py`): Slurm (one task per node, one task per
GPU), TPU pod slices and explicit host lists parsed from faked environments into
`jax.distributed.initialize`'s arguments; the pre-flight rendezvous on 127.0.0.1 only."""

import socket
import threading
import types

import pytest

from ncf_jax import launch
from ncf_jax.launch import LaunchError, Settings
from conftest import free_port


def _flags(**values):
  base = dict(coordinator_address=None, num_processes=None, process_id=None, hosts=None,
              coordinator_port=None, distributed=False, initialization_timeout=300)
  return types.SimpleNamespace(**{**base, **values})


def test_slurm_hostlists_expand_like_scontrol_show_hostnames():
  assert launch.expand_hostlist('node001') == ['node001']
  assert launch.expand_hostlist('a,b') == ['a', 'b']
  assert launch.expand_hostlist('gpu[008-010,012],cpu7') == ['gpu008', 'gpu009', 'gpu010',
                                                               'gpu012', 'cpu7']
  assert launch.expand_hostlist('n[1-2]-ib') == ['n1-ib', 'n2-ib']


SLURM_4_NODES = dict(SLURM_JOB_ID='123456', SLURM_STEP_NODELIST='gpu[008-011]',
                     SLURM_JOB_NODELIST='gpu[008-011]', SLURM_STEP_NUM_NODES='4',
                     SLURM_GPUS_ON_NODE='8')


def test_slurm_one_task_per_node_takes_every_gpu_of_its_node():
  # srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8: task 2 on the third node.
  env = dict(SLURM_4_NODES, SLURM_NTASKS='4', SLURM_PROCID='2', SLURM_LOCALID='0',
             SLURM_NODEID='2', SLURM_STEP_TASKS_PER_NODE='1(x4)',
             CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7')
  port = 123456 % 4096 + 61440
  assert launch.settings(_flags(distributed=True), env) == Settings(
      f'gpu008:{port}', 4, 2, None, 'slurm')  # None: all 8 local GPUs (jax would give [0])


def test_slurm_one_task_per_gpu():
  # srun --nodes=4 --ntasks-per-node=8 --gpus-per-node=8, every GPU visible to every task:
  # task 13 is local rank 5 on the second node and takes GPU 5.
  env = dict(SLURM_4_NODES, SLURM_NTASKS='32', SLURM_PROCID='13', SLURM_LOCALID='5',
             SLURM_NODEID='1', SLURM_STEP_TASKS_PER_NODE='8(x4)',
             CUDA_VISIBLE_DEVICES='0,1,2,3,4,5,6,7')
  settings = launch.settings(_flags(distributed=True), env)
  assert (settings.num_processes, settings.process_id, settings.local_device_ids) == (32, 13, (5,))
  # The same with Slurm binding each task to its own GPU (--gpus-per-task=1): the one visible.
  bound = dict(env, CUDA_VISIBLE_DEVICES='5')
  assert launch.settings(_flags(distributed=True), bound).local_device_ids is None
  # Two tasks per node sharing 8 GPUs: four each, by local rank.
  two = dict(env, SLURM_NTASKS='8', SLURM_PROCID='3', SLURM_LOCALID='1',
             SLURM_STEP_TASKS_PER_NODE='2(x4)')
  assert launch.settings(_flags(distributed=True), two).local_device_ids == (4, 5, 6, 7)
  uneven = dict(two, SLURM_STEP_TASKS_PER_NODE='3(x4)')
  with pytest.raises(LaunchError, match='3 tasks on this node cannot share 8 GPUs evenly'):
    launch.settings(_flags(distributed=True), uneven)


def test_slurm_port_overrides_and_the_kwargs_jax_receives():
  env = dict(SLURM_4_NODES, SLURM_NTASKS='4', SLURM_PROCID='0', SLURM_LOCALID='0',
             SLURM_STEP_TASKS_PER_NODE='1(x4)')
  assert launch.settings(_flags(distributed=True, coordinator_port=7000), env
                         ).coordinator_address == 'gpu008:7000'
  assert launch.settings(_flags(distributed=True), dict(env, JAX_COORDINATOR_PORT='7001')
                         ).coordinator_address == 'gpu008:7001'
  assert launch.settings(_flags(distributed=True), env).initialize_kwargs() == dict(
      coordinator_address=f'gpu008:{123456 % 4096 + 61440}', num_processes=4, process_id=0,
      local_device_ids=None)


def test_tpu_pod_slice():
  env = dict(TPU_WORKER_HOSTNAMES='t1v-a-0,t1v-a-1,t1v-a-2,t1v-a-3', TPU_WORKER_ID='3')
  assert launch.settings(_flags(distributed=True), env) == Settings(
      't1v-a-0:8482', 4, 3, None, 'tpu')
  multislice = dict(env, MEGASCALE_NUM_SLICES='2', MEGASCALE_SLICE_ID='1',
                    MEGASCALE_COORDINATOR_ADDRESS='t1v-b-0:8080')
  assert launch.settings(_flags(distributed=True), multislice) == Settings(
      't1v-b-0:8482', 8, 7, None, 'tpu')
  with pytest.raises(LaunchError, match='TPU_WORKER_ID=4 is not an index of the 4 workers'):
    launch.settings(_flags(distributed=True), dict(env, TPU_WORKER_ID='4'))


def test_explicit_host_list():
  hosts = ['h0.lab', 'h1', 'h2']
  assert launch.settings(_flags(hosts=hosts), {}, hostname='h1.lab') == Settings(
      f'h0.lab:{launch.DEFAULT_HOSTS_PORT}', 3, 1, None, 'hosts')
  assert launch.settings(_flags(hosts=hosts, coordinator_port=999), {}, hostname='h0.lab'
                         ) == Settings('h0.lab:999', 3, 0, None, 'hosts')
  assert launch.settings(_flags(hosts=hosts, process_id=2), {}, hostname='elsewhere'
                         ).process_id == 2
  with pytest.raises(LaunchError, match=r'^--hosts: this host \(elsewhere\) is not in the list; '
                                        'give --process_id$'):
    launch.settings(_flags(hosts=hosts), {}, hostname='elsewhere')
  with pytest.raises(LaunchError, match='drop --num_processes'):
    launch.settings(_flags(hosts=hosts, num_processes=3), {}, hostname='h1')


def test_no_flags_is_one_process_and_named_flags_pass_through():
  assert launch.settings(_flags(), {}) is None
  assert launch.settings(_flags(coordinator_address='127.0.0.1:5000', num_processes=2,
                                process_id=1), {}) == Settings('127.0.0.1:5000', 2, 1)
  assert launch.settings(_flags(distributed=True), {'OMPI_COMM_WORLD_SIZE': '2'}) == 'jax'


def _peer_in_thread(address: str, num_processes: int, process_id: int):
  """A peer's pre-flight on a thread (started): (thread, {'peer': its error line, if any})."""
  errors = {}

  def peer():
    try:
      launch.preflight(Settings(address, num_processes, process_id), timeout=20)
    except LaunchError as e:
      errors['peer'] = str(e)

  thread = threading.Thread(target=peer)
  thread.start()
  return thread, errors


def test_a_missing_coordinator_is_one_line_naming_it():
  address = f'127.0.0.1:{free_port()}'  # nobody listens
  with pytest.raises(LaunchError) as error:
    launch.preflight(Settings(address, 2, 1), timeout=0.6)  # said in whole seconds
  assert str(error.value) == (f'coordinator {address}: nothing answered within 1 s '
                              '(--initialization_timeout), this is process 1 of 2; start '
                              'process 0 there first, with the same --num_processes')


def test_a_missing_peer_is_one_line_naming_it_and_the_waiting_peer_hears_it():
  address = f'127.0.0.1:{free_port()}'
  thread, errors = _peer_in_thread(address, num_processes=3, process_id=1)
  with pytest.raises(LaunchError) as error:
    launch.preflight(Settings(address, 3, 0), timeout=1)
  thread.join(30)
  assert str(error.value) == (f'coordinator {address}: process(es) 2 of 3 did not come within '
                              '1 s (--initialization_timeout); start every process with the '
                              'same --coordinator_address and --num_processes')
  assert errors['peer'] == (f'coordinator {address}: process 0 gave up waiting for the other '
                            'processes; this is process 1 of 3')


def test_every_process_there_passes_and_the_port_is_free_again():
  address = f'127.0.0.1:{free_port()}'
  done = []
  peers = [threading.Thread(target=lambda i=i: (launch.preflight(Settings(address, 3, i), 20),
                                                done.append(i))) for i in (1, 2)]
  for thread in peers:
    thread.start()
  launch.preflight(Settings(address, 3, 0), timeout=20)
  for thread in peers:
    thread.join(30)
  assert sorted(done) == [1, 2]
  with socket.socket() as s:  # what jax.distributed binds next
    s.bind(('127.0.0.1', int(address.rsplit(':', 1)[1])))


def test_a_peer_with_another_process_count_is_refused():
  address = f'127.0.0.1:{free_port()}'
  thread, errors = _peer_in_thread(address, num_processes=3, process_id=1)
  with pytest.raises(LaunchError, match=r'a process came with --num_processes=3, this one has '
                                        r'--num_processes=2$'):
    launch.preflight(Settings(address, 2, 0), timeout=20)
  thread.join(30)
  assert 'refused this process' in errors['peer']
