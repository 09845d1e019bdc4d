"""When a job is multi-process: decided from the environment alone."""

import re

import pytest

from train import distributed


@pytest.mark.parametrize('env, reason', [
    ({}, ''),
    ({'SLURM_NTASKS': '1'}, ''),
    ({'SLURM_NTASKS': '8'}, 'SLURM_NTASKS=8'),
    ({'OMPI_COMM_WORLD_SIZE': '4'}, 'OMPI_COMM_WORLD_SIZE=4'),
    ({'TPU_WORKER_HOSTNAMES': 'localhost'}, ''),
    ({'TPU_WORKER_HOSTNAMES': 'h0,h1'}, 'TPU_WORKER_HOSTNAMES=h0,h1'),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, 'JAX_COORDINATOR_ADDRESS=10.0.0.1:1234'),
    ({'SLURM_NTASKS': '8', 'CCI_C2S2_DISTRIBUTED': '0'}, ''),
])
def test_multi_process_reason(env, reason):
  assert distributed.multi_process_reason(env) == reason


def test_single_process_does_not_initialise():
  assert distributed.maybe_initialize({}) is False


BY_HAND = {'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': '2',
           'JAX_PROCESS_ID': '1'}


@pytest.mark.parametrize('env, expected', [
    (BY_HAND, {'coordinator_address': '127.0.0.1:1234', 'num_processes': 2,
               'process_id': 1, 'heartbeat_timeout_seconds': 100}),
    ({**BY_HAND, 'CCI_C2S2_HEARTBEAT_TIMEOUT_S': '7'},
     {'coordinator_address': '127.0.0.1:1234', 'num_processes': 2, 'process_id': 1,
      'heartbeat_timeout_seconds': 7}),
    # JAX detects these jobs itself, also when they name a coordinator.
    ({'SLURM_NTASKS': '8'}, {'heartbeat_timeout_seconds': 100}),
    ({'SLURM_NTASKS': '8', 'JAX_COORDINATOR_ADDRESS': 'h0:1234'},
     {'heartbeat_timeout_seconds': 100}),
    ({'OMPI_COMM_WORLD_SIZE': '4'}, {'heartbeat_timeout_seconds': 100}),
    ({'TPU_WORKER_HOSTNAMES': 'h0,h1'}, {'heartbeat_timeout_seconds': 100}),
])
def test_initialize_arguments(env, expected):
  assert distributed.initialize_arguments(env) == expected


@pytest.mark.parametrize('env, named', [
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234'}, 'JAX_NUM_PROCESSES'),
    ({**BY_HAND, 'JAX_PROCESS_ID': ''}, 'JAX_PROCESS_ID'),
    ({**BY_HAND, 'JAX_NUM_PROCESSES': 'two'}, "JAX_NUM_PROCESSES='two'"),
    ({**BY_HAND, 'JAX_PROCESS_ID': '2'}, 'JAX_PROCESS_ID=2 is not in [0, '),
    ({**BY_HAND, 'CCI_C2S2_HEARTBEAT_TIMEOUT_S': '-1'}, 'CCI_C2S2_HEARTBEAT_TIMEOUT_S'),
])
def test_malformed_launch_variables_are_named(env, named):
  with pytest.raises(ValueError, match=re.escape(named)):
    distributed.initialize_arguments(env)
