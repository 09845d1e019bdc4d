"""The files of a workdir: their names, atomic writes and tolerant reads.

Every file or directory a run keeps in its workdir is named here; every file is written
through `write_atomically` (write a temporary file, then rename it).
"""

import json
import os
from typing import IO, Any, Callable

from absl import logging

from train import errors

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
SELECTION_DIR = 'selection'  # Channel selection (C2S2, baselines), before the fine-tune.
UNIT_START_DIR = 'unit_start'  # In SELECTION_DIR: C2S2's state when its unit began.
DAMAGED_DIR = 'damaged'  # Damaged JSON files, moved aside (checkpoints: CHECKPOINT_DIR/damaged).
TENSORBOARD_DIR = 'tensorboard'
EXPORT_DIR = 'export'
MANIFEST_FILE = 'manifest.json'  # In EXPORT_DIR: what the export holds, its test top-1.
PACKED_FILE = 'cci_packed.npz'  # In EXPORT_DIR: a CCI model's packed kernels.
METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
EVAL_FILE = 'eval.json'
DECISIONS_FILE = 'c2s2.jsonl'  # C2S2's cost-check decisions, one JSON object a line.
WIDTHS_FILE = 'widths.json'  # The model's widths (a compact model's after selection).
START_FILE = 'start.json'  # train.reproduce: the run a row started from (its summary digest).
LAYERS_FILE = 'layers.json'  # CCI's per-layer sparsity table.
EFFICIENCY_FILE = 'efficiency.json'
ATTEMPTS_FILE = 'reproduce_attempts.json'  # train.reproduce: each attempt's wall time.
RUN_DIRS = (CHECKPOINT_DIR, SELECTION_DIR, DAMAGED_DIR)
RUN_FILES = (METRICS_FILE, SUMMARY_FILE, EVAL_FILE, DECISIONS_FILE, WIDTHS_FILE,
             LAYERS_FILE, EFFICIENCY_FILE)


def has_checkpoints(workdir: str) -> bool:
  """Whether any file (a checkpoint, or part of one) is under the workdir's run dirs.

  Empty directories do not count: a run that failed its checks after creating them
  (e.g. a bad `init_from`) left nothing to protect.
  """
  return any(files for d in RUN_DIRS
             for _, _, files in os.walk(os.path.join(workdir, d)))


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def read_jsonl(path: str) -> list[Any]:
  """The JSON objects of a file holding one a line."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_record(path: str) -> Any:
  """The JSON file at `path`; None if it is missing or damaged.

  A damaged file (not JSON) is reported in one warning and moved to `damaged/` beside
  it, never deleted; the caller falls back to what it does without the file.
  """
  if not os.path.exists(path):
    return None
  try:
    return read_json(path)
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError.
    target = os.path.join(os.path.dirname(path), DAMAGED_DIR, os.path.basename(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(path, target)
    logging.warning('%s is damaged (%s); moved to %s.', path, e, target)
    return None


def write_atomically(path: str, write: Callable[[IO], Any], mode: str = 'w',
                     **open_options: Any) -> None:
  """Calls `write` on a temporary file beside `path`, then renames it to `path`: a
  reader never sees half a file, and a failure leaves the previous file intact.

  Raises:
    errors.DiskFullError: no space left (names `path`).
  """
  tmp = f'{path}.{os.getpid()}.tmp'  # Two processes writing one file do not collide.
  try:
    with errors.naming_full_disk(path):
      errors.fail_if_disk_full_simulated(path)
      with open(tmp, mode, **open_options) as f:
        write(f)
      os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):  # Failed half-way: no half-written file is left.
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (`write_atomically`)."""
  write_atomically(path, lambda f: f.write(text))


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON with sorted keys, atomically."""
  write_text(path, json.dumps(value, indent=2, sort_keys=True, default=_to_builtin) + '\n')


def _to_builtin(value: Any) -> Any:
  if hasattr(value, 'tolist'):
    return value.tolist()
  raise TypeError(f'Cannot write {type(value).__name__} as JSON.')
