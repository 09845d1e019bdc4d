"""Where and from what a result came: the code revision and the hardware."""

import datetime
import functools
import os
import platform
import subprocess
from typing import Any

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The files whose changes can change a result (a row is stale if they changed).
CODE_PATHS = ('cci', 'c2s2', 'train', 'configs', 'main.py', 'requirements.txt')


def _git(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(('git', '-C', _REPO) + args, capture_output=True, text=True,
                        timeout=30)


def revision() -> str:
  """The git revision of this checkout, suffixed `-dirty` with uncommitted changes to
  the code that produces results (`CODE_PATHS`; not docs or tests)."""
  try:
    head = _git('rev-parse', 'HEAD')
    status = _git('status', '--porcelain', '--untracked-files=no', '--', *CODE_PATHS)
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  if head.returncode or status.returncode:
    return 'unknown'
  return head.stdout.strip() + ('-dirty' if status.stdout.strip() else '')


@functools.lru_cache(maxsize=None)
def stale_reason(recorded: str) -> str:
  """Why a result made at revision `recorded` may differ from one made at HEAD ('' if
  the code that produces results, `CODE_PATHS`, is the same at both)."""
  if recorded.endswith('-dirty'):
    return f'ran with uncommitted changes on {recorded[:12]}'
  try:
    diff = _git('diff', '--name-only', recorded, 'HEAD', '--', *CODE_PATHS)
  except (OSError, subprocess.SubprocessError) as e:
    return f'git unavailable ({e})'
  if diff.returncode:
    return f'revision {recorded[:12]} is not in this repository'
  changed = sorted({path.split('/')[0] for path in diff.stdout.split()})
  return f'{", ".join(changed)} changed since {recorded[:12]}' if changed else ''


def cpu_model() -> str:
  """The CPU's marketing name where the OS tells it, else the architecture."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
  """Devices, host CPU and process count of this run."""
  import jax  # Not at import: the reproduction harness reads revisions without JAX.
  import jaxlib
  devices = jax.devices()
  return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'devices': len(devices), 'processes': jax.process_count(),
          'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__}


def machine() -> dict[str, Any]:
  """`hardware()` with the revision and the date: what a benchmark ran on."""
  return {**hardware(), 'revision': revision(),
          'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
