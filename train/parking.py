"""Parked rows: an unfinished row's workdir kept with the results, for another machine.

A row longer than a session (a dense-schedule run on CPU) cannot finish where machines
do not keep the harness's `ROOT`. `python -m train.reproduce ... --park` copies each
unfinished row's workdir to `RESULTS/parked/PRESET/ROW` (seed s > 0: `ROW.seedS`): its
records and, in every checkpoint folder, only the newest complete checkpoint (every
array of the copy is checked against its checksum). Commit that folder. The next
run of the row, on any machine whose workdir of the row holds no checkpoint, starts
from the parked copy: the run resumes at the parked step with the data order and the
schedule of that step, so it ends as an uninterrupted run would; a parked copy further
along than the workdir's own checkpoints replaces them (moved aside), and parking never
replaces a copy further along. The harness deletes the parked copy once the row
finishes.
"""

import os
import shutil
from typing import Any

from train import errors
from train import workdir as workdir_lib

PARKED_DIR = 'parked'  # Under the harness's --results.
_SKIPPED = (workdir_lib.DAMAGED_DIR, workdir_lib.EXPORT_DIR)
# Folders of Orbax checkpoints: the training's, and C2S2 selection's (its own and its
# unit's start state).
_CHECKPOINT_FOLDERS = (workdir_lib.CHECKPOINT_DIR, workdir_lib.UNIT_START_DIR)


def parked_dir(results: str, preset: str, row: str, seed: int) -> str:
  """Where an unfinished row's workdir is parked."""
  return os.path.join(results, PARKED_DIR, preset, row if seed == 0 else f'{row}.seed{seed}')


def complete_steps(checkpoint_dir: str) -> list[int]:
  """The steps of the complete checkpoints in `checkpoint_dir` (Orbax renames a
  checkpoint's temporary folder to its step when the save is complete)."""
  if not os.path.isdir(checkpoint_dir):
    return []
  return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())


def _ignored(folder: str, names: list[str]) -> set[str]:
  """What a parked copy leaves out: damaged files, exports, incomplete checkpoints and
  every complete one but the newest."""
  left_out = {name for name in names if name in _SKIPPED}
  if os.path.basename(folder) in _CHECKPOINT_FOLDERS:
    newest = max(complete_steps(folder), default=None)
    left_out |= {name for name in names if name[:1].isdigit() and name != str(newest)}
  return left_out


def checkpoint_folders(workdir: str) -> list[str]:
  """The checkpoint folders of a run holding a complete checkpoint (the training's and,
  for a channel-pruned row, the selection's), relative to `workdir`."""
  return sorted(os.path.relpath(folder, workdir) for folder, _, _ in os.walk(workdir)
                if os.path.basename(folder) in _CHECKPOINT_FOLDERS
                and workdir_lib.DAMAGED_DIR not in folder.split(os.sep)
                and complete_steps(folder))


def progress(workdir: str) -> tuple[int, int]:
  """How far a run has come: (the training's newest step, the newest step of its
  other checkpoint folders, i.e. channel selection); -1 for none."""
  steps = {folder: max(complete_steps(os.path.join(workdir, folder)))
           for folder in checkpoint_folders(workdir)}
  return (steps.pop(workdir_lib.CHECKPOINT_DIR, -1), max(steps.values(), default=-1))


def park(workdir: str, destination: str) -> dict[str, int]:
  """Copies the unfinished run in `workdir` to `destination`, replacing an older copy
  only once the new one is complete and every checkpoint of it is verified.

  Returns:
    The step each checkpoint folder of the copy resumes from.

  Raises:
    errors.MissingInputError: `workdir` holds no complete checkpoint.
    errors.UserError: the parked copy is further along (it is kept), or the copy
      failed: a file went away (the run moved on) or a checkpoint is damaged (names
      it; nothing is replaced).
  """
  if not checkpoint_folders(workdir):
    raise errors.MissingInputError(
        f'{workdir} holds no complete checkpoint: there is nothing to park.')
  from train import checkpoints  # Imports JAX: only when a row is parked.
  partial, old = destination + '.partial', destination + '.old'
  for leftover in (partial, old):
    shutil.rmtree(leftover, ignore_errors=True)
  if os.path.isdir(destination) and progress(destination) > progress(workdir):
    raise errors.UserError(
        f'{destination} is further along ({progress(destination)}) than {workdir} '
        f'({progress(workdir)}): it is kept. Run the row to resume from it.')
  try:
    shutil.copytree(workdir, partial, ignore=_ignored)  # OSError if the run moves on.
    steps = {folder: checkpoints.verified_step(os.path.join(partial, folder))
             for folder in checkpoint_folders(partial)}
  except (OSError, errors.UserError) as e:
    shutil.rmtree(partial, ignore_errors=True)
    raise errors.UserError(
        f'{workdir}: its copy failed ({e}), so nothing was parked. Park it again once the '
        'run has stopped; if a checkpoint is damaged, run the row first (it moves a '
        'damaged checkpoint aside and resumes from its newest intact one).') from None
  if os.path.exists(destination):
    os.replace(destination, old)
  os.replace(partial, destination)
  shutil.rmtree(old, ignore_errors=True)
  return steps


def config_for_machine(parked: str, machine: dict[str, str]) -> dict[str, Any]:
  """The parked copy's config with this machine's values of the keys in `machine`
  ('a.b': the path of the run the row starts from, data folders given by --override),
  so that the resumed run's config equals its command's.

  Raises:
    ValueError: a key of `machine` differs and is not a text value of the config.
  """
  config = workdir_lib.read_json(os.path.join(parked, workdir_lib.CONFIG_FILE))
  for key, value in machine.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node.get(parent, {}) if isinstance(node, dict) else {}
    if str(node.get(leaf)) == value:
      continue
    if not isinstance(node.get(leaf), str):
      raise ValueError(f'{parked}: config key {key} is not a text value; it differs from '
                       f'this machine\'s {value!r}, so the copy is not resumed.')
    node[leaf] = value
  return config


def restore(parked: str, workdir: str, config: dict[str, Any]) -> None:
  """Puts the parked copy, with `config` (`config_for_machine`), at `workdir` (which
  must not exist)."""
  unparking = workdir + '.unparking'
  shutil.rmtree(unparking, ignore_errors=True)
  shutil.copytree(parked, unparking)
  workdir_lib.write_json(os.path.join(unparking, workdir_lib.CONFIG_FILE), config)
  os.replace(unparking, workdir)


def discard(parked: str) -> bool:
  """Deletes a parked copy (its row is finished); returns whether there was one."""
  if not os.path.isdir(parked):
    return False
  shutil.rmtree(parked)
  return True
