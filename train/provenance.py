"""Where and from what a result came: the code revision and the hardware."""

import datetime
import functools
import hashlib
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The files whose changes can change a result (a row is stale if they changed).
CODE_PATHS = ('cci', 'c2s2', 'train', 'configs', 'main.py', 'requirements.txt')
# Config files only make config values: a run records its whole resolved config, and
# the harness compares that with the row's (`reproduce.same_config`), so a config
# file's change that matters to a run shows there, and one that does not (a key added
# for another method) leaves its result current.
CONFIG_PATHS = ('configs/',)


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


def _blob_hash(path: str) -> str:
  """The file's git blob hash (what `git hash-object` prints)."""
  with open(path, 'rb') as f:
    content = f.read()
  return hashlib.sha1(b'blob %d\0' % len(content) + content).hexdigest()


def code_files() -> dict[str, str]:
  """The code this process ran: every file under `CODE_PATHS` it imported, plus
  requirements.txt, each with its git blob hash (repository-relative paths)."""
  paths = {'requirements.txt'}
  for module in list(sys.modules.values()):
    file = getattr(module, '__file__', None)
    if not file:
      continue
    path = os.path.relpath(os.path.abspath(file), _REPO)
    if path.split(os.sep)[0] in CODE_PATHS:
      paths.add(path.replace(os.sep, '/'))
  return {p: _blob_hash(os.path.join(_REPO, p)) for p in sorted(paths)
          if os.path.isfile(os.path.join(_REPO, p))}


@functools.lru_cache(maxsize=4)
def _blobs_at(revision: str) -> dict[str, str] | None:
  """{path: blob hash} of `CODE_PATHS` at `revision` (None if git cannot tell)."""
  listing = _git('ls-tree', '-r', revision, '--', *CODE_PATHS)
  if listing.returncode:
    return None
  blobs = {}
  for line in listing.stdout.splitlines():
    meta, path = line.split('\t', 1)
    blobs[path] = meta.split()[2]
  return blobs


def _named(paths: list[str], since: str) -> str:
  shown = ', '.join(paths[:6]) + (f' and {len(paths) - 6} more' if len(paths) > 6 else '')
  return f'{shown} changed since {since[:12]}'


def stale_reason(recorded: str, code: Mapping[str, str] | None = None) -> str:
  """Why a result made at revision `recorded` may differ from one made at HEAD ('' if
  not). With `code` (the run's `code_files()`), only the files the run imported count,
  config files aside (`CONFIG_PATHS`); without it (older records), every file under
  `CODE_PATHS`."""
  try:
    head = _git('rev-parse', 'HEAD')
    head_blobs = _blobs_at(head.stdout.strip()) if not head.returncode else None
  except (OSError, subprocess.SubprocessError) as e:
    return f'git unavailable ({e})'
  if head_blobs is None:
    return 'git cannot read HEAD'
  if code:
    changed = sorted(p for p, blob in code.items()
                     if head_blobs.get(p) != blob and not p.startswith(CONFIG_PATHS))
    return _named(changed, recorded) if changed else ''
  if recorded.endswith('-dirty'):
    return f'ran with uncommitted changes on {recorded[:12]}'
  try:
    diff = _git('diff', '--name-only', recorded, 'HEAD', '--', *CODE_PATHS)
  except (OSError, subprocess.SubprocessError) as e:
    return f'git unavailable ({e})'
  if diff.returncode:
    return f'revision {recorded[:12]} is not in this repository'
  changed = sorted(diff.stdout.split())
  return _named(changed, recorded) if changed else ''


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
