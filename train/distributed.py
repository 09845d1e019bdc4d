"""Multi-process start-up: `jax.distributed.initialize()` when the environment asks for it.

On a TPU pod slice, a SLURM or Open MPI job of several tasks, or a job launched by JAX's
own variables, every process runs the same `main.py`; JAX then sees all devices of all
processes, each process reads its own slice of every batch (`train/data.py`), and only
process 0 writes JSON files and summaries (orbax coordinates checkpoint writes).

Launched by hand (e.g. two processes on one machine), every process gets
`JAX_COORDINATOR_ADDRESS=HOST:PORT JAX_NUM_PROCESSES=N JAX_PROCESS_ID=i`: this JAX does
not read the last two itself, so they are passed to `initialize`. SLURM, Open MPI and
TPU jobs are detected by JAX. `CCI_C2S2_HEARTBEAT_TIMEOUT_S` (default 100) bounds how
long the others wait before they stop when one process dies.
"""

import os
from collections.abc import Mapping
from typing import Any

import jax
from absl import logging

# Variables that mean "this process is one of several": checked in this order.
_MULTI_PROCESS = (
    ('JAX_COORDINATOR_ADDRESS', lambda v: bool(v)),
    ('SLURM_NTASKS', lambda v: v.isdigit() and int(v) > 1),
    ('OMPI_COMM_WORLD_SIZE', lambda v: v.isdigit() and int(v) > 1),
    ('TPU_WORKER_HOSTNAMES', lambda v: ',' in v),
    ('MEGASCALE_COORDINATOR_ADDRESS', lambda v: bool(v)),
)
HEARTBEAT_ENV = 'CCI_C2S2_HEARTBEAT_TIMEOUT_S'
_DEFAULT_HEARTBEAT_S = 100


def multi_process_reason(env: Mapping[str, str]) -> str:
  """The variable that makes this a multi-process job, or '' for a single process."""
  if env.get('CCI_C2S2_DISTRIBUTED', '').lower() in ('0', 'false', 'off'):
    return ''
  for name, says_so in _MULTI_PROCESS:
    if name in env and says_so(env[name]):
      return f'{name}={env[name]}'
  return ''


def _env_int(env: Mapping[str, str], name: str, why: str) -> int:
  """The integer value of `env[name]`; ValueError naming the variable otherwise."""
  value = env.get(name, '')
  if not value.strip().isdigit():
    raise ValueError(f'{name}={value!r} must be set to a non-negative integer {why}')
  return int(value)


def initialize_arguments(env: Mapping[str, str]) -> dict[str, Any]:
  """Keyword arguments of `jax.distributed.initialize` for this environment.

  With JAX_COORDINATOR_ADDRESS set outside a SLURM / Open MPI / TPU job,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID are required (this JAX raises "Number of
  processes must be defined" without them); in such a job JAX detects them itself.

  Raises:
    ValueError: a variable is missing or malformed (named in the message).
  """
  heartbeat = _DEFAULT_HEARTBEAT_S
  if HEARTBEAT_ENV in env:
    heartbeat = _env_int(env, HEARTBEAT_ENV, '(seconds)')
  arguments: dict[str, Any] = {'heartbeat_timeout_seconds': heartbeat}
  address = env.get('JAX_COORDINATOR_ADDRESS')
  by_hand = ('JAX_NUM_PROCESSES' in env or 'JAX_PROCESS_ID' in env
             or not any(name in env for name, _ in _MULTI_PROCESS[1:]))
  if not address or not by_hand:
    return arguments  # JAX detects SLURM / Open MPI / TPU jobs.
  why = f'alongside JAX_COORDINATOR_ADDRESS={address}'
  count = _env_int(env, 'JAX_NUM_PROCESSES', why)
  index = _env_int(env, 'JAX_PROCESS_ID', why)
  if not 0 <= index < count:
    raise ValueError(f'JAX_PROCESS_ID={index} is not in [0, JAX_NUM_PROCESSES={count})')
  return {**arguments, 'coordinator_address': address, 'num_processes': count,
          'process_id': index}


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize()` if the job is multi-process.

  Must run before any other JAX call. Set CCI_C2S2_DISTRIBUTED=0 to skip it.

  Returns:
    Whether it initialised.
  """
  env = os.environ if env is None else env
  reason = multi_process_reason(env)
  if not reason:
    return False
  arguments = initialize_arguments(env)
  logging.info('Multi-process job (%s): jax.distributed.initialize(%s).', reason,
               arguments)
  jax.distributed.initialize(**arguments)
  return True
