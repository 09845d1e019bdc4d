"""Parked rows: an unfinished row's workdir kept with the results, for another machine.

A row longer than a session (a dense-schedule run on CPU) cannot finish where machines
do not keep the harness's `ROOT`. `python -m train.reproduce ... --park` copies each
unfinished row's workdir to `RESULTS/parked/PRESET/ROW` (seed s > 0: `ROW.seedS`): its
records and, in every checkpoint folder, only the newest complete checkpoint (every
array of the copy is checked against its checksum). Commit that folder. The next
run of the row, on any machine whose workdir of the row holds no checkpoint, starts
from the parked copy: the run resumes at the parked step with the data order and the
schedule of that step, so it ends as an uninterrupted run would. The harness deletes
the parked copy once the row is finished or recorded.
"""

import os
import shutil

from train import errors
from train import workdir as workdir_lib

PARKED_DIR = 'parked'  # Under the harness's --results.
_SKIPPED = (workdir_lib.DAMAGED_DIR, workdir_lib.EXPORT_DIR)


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
  if os.path.basename(folder) == workdir_lib.CHECKPOINT_DIR:
    newest = max(complete_steps(folder), default=None)
    left_out |= {name for name in names if name[:1].isdigit() and name != str(newest)}
  return left_out


def checkpoint_folders(workdir: str) -> list[str]:
  """The checkpoint folders of a run holding a complete checkpoint (the training's and,
  for a channel-pruned row, the selection's), relative to `workdir`."""
  return sorted(os.path.relpath(folder, workdir) for folder, _, _ in os.walk(workdir)
                if os.path.basename(folder) == workdir_lib.CHECKPOINT_DIR
                and complete_steps(folder))


def park(workdir: str, destination: str) -> dict[str, int]:
  """Copies the unfinished run in `workdir` to `destination`, replacing an older copy
  only once the new one is complete and every checkpoint of it is verified.

  Returns:
    The step each checkpoint folder of the copy resumes from.

  Raises:
    errors.MissingInputError: `workdir` holds no complete checkpoint.
    errors.UserError: a copied checkpoint is damaged (names it; nothing is replaced).
  """
  if not checkpoint_folders(workdir):
    raise errors.MissingInputError(
        f'{workdir} holds no complete checkpoint: there is nothing to park.')
  from train import checkpoints  # Imports JAX: only when a row is parked.
  partial, old = destination + '.partial', destination + '.old'
  for leftover in (partial, old):
    shutil.rmtree(leftover, ignore_errors=True)
  shutil.copytree(workdir, partial, ignore=_ignored)
  try:
    steps = {folder: checkpoints.verified_step(os.path.join(partial, folder))
             for folder in checkpoint_folders(partial)}
  except errors.UserError as e:
    shutil.rmtree(partial)
    raise errors.UserError(
        f'{workdir}: its copy failed the check ({e}), so nothing was parked. Run the row '
        'again (it moves a damaged checkpoint aside and resumes from its newest intact '
        'one), then park it.') from None
  if os.path.exists(destination):
    os.replace(destination, old)
  os.replace(partial, destination)
  shutil.rmtree(old, ignore_errors=True)
  return steps


def restore(parked: str, workdir: str, init_from: str) -> None:
  """Puts the parked copy at `workdir` (which must not exist), recording `init_from`
  (this machine's path of the run the row starts from) in its config."""
  unparking = workdir + '.unparking'
  shutil.rmtree(unparking, ignore_errors=True)
  shutil.copytree(parked, unparking)
  if init_from:  # The start's path on the machine that parked it may differ.
    path = os.path.join(unparking, workdir_lib.CONFIG_FILE)
    workdir_lib.write_json(path, {**workdir_lib.read_json(path), 'init_from': init_from})
  os.replace(unparking, workdir)


def discard(parked: str) -> bool:
  """Deletes a parked copy (its row is finished); returns whether there was one."""
  if not os.path.isdir(parked):
    return False
  shutil.rmtree(parked)
  return True
