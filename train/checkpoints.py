"""Orbax checkpoints of the train state plus a small JSON record per step.

Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-write resumes from the last complete checkpoint.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores `TrainState` pytrees and a JSON `meta` record by step."""

  def __init__(self, directory: str, keep: int, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=not read_only)
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an (asynchronous) save of `state` and `meta` at `step`."""
    self._manager.save(
        step, force=True,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the checkpoint at `step` into the shapes and shardings given.

    Raises:
      ValueError: the checkpoint does not fit `abstract_state` (another model or
        other widths).
    """
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              meta=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f'Checkpoint {self.directory}/{step} does not match the configured model '
          f'(another model, widths or method?): {e}') from e
    return restored.state, dict(restored.meta)

  def wait(self) -> None:
    """Blocks until every pending save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Shape/dtype/sharding skeleton of `tree`, for `Checkpointer.restore`."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
