"""When a job is multi-process: decided from the environment alone."""

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
