"""Where and from what a result came: the code revision and the hardware."""

import os
import platform
import subprocess
from typing import Any

import jax

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def revision() -> str:
  """The git revision of this checkout, suffixed `-dirty` with uncommitted changes."""
  def git(*args: str) -> str:
    return subprocess.run(('git', '-C', _REPO) + args, capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
  try:
    rev = git('rev-parse', 'HEAD')
    return rev + ('-dirty' if git('status', '--porcelain', '--untracked-files=no') else '')
  except (OSError, subprocess.SubprocessError):
    return 'unknown'


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
  devices = jax.devices()
  return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'devices': len(devices), 'processes': jax.process_count(),
          'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__}
