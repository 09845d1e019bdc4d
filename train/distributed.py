"""Multi-host start-up: `jax.distributed.initialize()` when the environment asks for it.

On a TPU pod slice, a SLURM or Open MPI job of several tasks, or with an explicit
coordinator address, every host runs the same `main.py`; JAX then sees all devices of
all hosts, each host reads its own shard of every batch (`train/data.py`), and only
process 0 writes JSON files and summaries (orbax coordinates checkpoint writes).
"""

import os
from collections.abc import Mapping

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


def multi_process_reason(env: Mapping[str, str]) -> str:
  """The variable that makes this a multi-process job, or '' for a single process."""
  if env.get('CCI_C2S2_DISTRIBUTED', '').lower() in ('0', 'false', 'off'):
    return ''
  for name, says_so in _MULTI_PROCESS:
    if name in env and says_so(env[name]):
      return f'{name}={env[name]}'
  return ''


def maybe_initialize(env: Mapping[str, str] | None = None) -> bool:
  """Calls `jax.distributed.initialize()` (auto-detected cluster) if the job is multi-process.

  Must run before any other JAX call. Set CCI_C2S2_DISTRIBUTED=0 to skip it.

  Returns:
    Whether it initialised.
  """
  reason = multi_process_reason(os.environ if env is None else env)
  if not reason:
    return False
  logging.info('Multi-process job (%s): jax.distributed.initialize().', reason)
  jax.distributed.initialize()
  return True
