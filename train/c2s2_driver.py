"""C2S2's progressive layer-wise selection: the schedule of units, the cost check and
surgery (METHODS.md 2.2).

Units of `layers_per_step` channel groups are processed input to output: phase 1 trains
the unit's pruning scales with the L1 proximal step, binarisation fixes the mask, phase 2
fine-tunes, the cost check compares the held-out `cost_metric` (top-1, or mIoU for
segmentation) with the pre-trained reference and restores channels (or halves lambda
and redoes phase 1), and surgery removes the pruned channels. Each phase is a method
(`c2s2_setup.selection_method`, `c2s2.optim`: the scales are trainable parameters, the
proximal step an optax transformation and a projection, the scales folded in the
forward pass) that the ordinary train step (`train.steps`) and inner loop
(`train.runner`) run, so selection logs its progress,
metrics.jsonl (splits 'selection' and 'held_out') and TensorBoard like training.
Everything else lives in `workdir/selection/`: orbax checkpoints whose JSON record holds
the typed `Position`, so a killed run resumes inside a phase. The compact model then
goes through the ordinary training loop (the final fine-tune) with `config.init_from`
pointing at the selection.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from c2s2 import optim as c2s2_optim
from c2s2 import selection, surgery
from train import (c2s2_setup, checkpoints, data, errors, experiment, metrics, model_setup,
                   models, runner, steps)
from train import workdir as workdir_lib
from train.c2s2_setup import SCALES_KEY, Setup, make_setup
from train.state import TrainState

# 1: the untyped `pos` dict beside a SelectionState; 2: before landing on the MACs
# target (its phase-2 masks did not land; refused, so a resumed run equals a fresh one).
POSITION_VERSION = 3


@dataclasses.dataclass(frozen=True)
class Position:
  """Where the schedule stands; the JSON record of each selection checkpoint.

  Attributes:
    unit: the unit being selected (== number of units: every unit done).
    phase: 'start' (the unit has no pruning layers yet), 'phase1' or 'phase2'.
    phase_start: the step the phase began at.
    retry: how many cost checks of this unit failed.
    lambdas: group name -> its L1 strength (halved by 'halve_lambda').
    widths: the model's widths now (after the surgery of the units done).
    reference: the pre-trained model's held-out metrics.
    decisions: one record per cost check (also written to c2s2.jsonl).
    finished: selection is over.
    landed: this unit's binarisation kept channels to land on `target_macs_ratio`
      (cleared by the cost check's retries and at the next unit).
  """
  unit: int
  phase: str
  phase_start: int
  retry: int
  lambdas: dict[str, float]
  widths: dict[str, int]
  reference: dict[str, Any]
  decisions: list[dict[str, Any]]
  finished: bool = False
  landed: bool = False

  def record(self) -> dict[str, Any]:
    return {'version': POSITION_VERSION, **dataclasses.asdict(self)}

  @classmethod
  def from_record(cls, record: dict[str, Any], where: str) -> 'Position':
    """The position saved in `record` (of the checkpoint `where`).

    Raises:
      errors.UserError: the checkpoint comes from an older revision of the driver.
    """
    if record.get('version') != POSITION_VERSION:
      raise errors.UserError(
          f'{where} is a C2S2 selection checkpoint of an older revision of this code '
          f'(position format {record.get("version", 1)}, this code reads '
          f'{POSITION_VERSION}); it cannot be resumed. Delete {os.path.dirname(where)} '
          'to select again, or use another --workdir.')
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in record.items() if k in fields})


def operate(state: TrainState, graph, masks: dict[str, np.ndarray]) -> TrainState:
  """Surgery: folds the unit's scales, removes its pruned channels, drops its layers."""
  params, scales = c2s2_setup.model_params(state), state.params[SCALES_KEY]
  folded = params
  for name, mask in masks.items():
    folded = surgery.fold_scale(folded, graph.group(name), scales[name] * mask)
  variables = {'params': folded, 'batch_stats': state.batch_stats}
  removal = surgery.plan(graph, masks, variables)
  sliced = surgery.slice_variables(variables, removal)
  opt_state = surgery.slice_params_like(state.opt_state, params, removal)
  return state.replace(
      params={**sliced['params'], SCALES_KEY: {}}, batch_stats=sliced['batch_stats'],
      opt_state=c2s2_optim.with_layer_state(opt_state,
                                            c2s2_optim.PruningLayerState({}, {})))


class Interrupted(Exception):
  """Selection reached `stop_at_step` (a simulated interruption, for tests)."""


class Driver:
  """Runs (or resumes) the selection of one workdir; `run` returns the final widths."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               stop_at_step: int | None = None):
    self.setup: Setup = make_setup(config)
    self.stop_at_step = stop_at_step
    self.config, self.cp = config, config.channel_pruning
    self.workdir = workdir
    directory = os.path.join(workdir, workdir_lib.SELECTION_DIR)
    self.ckpt = checkpoints.Checkpointer(
        os.path.join(directory, workdir_lib.CHECKPOINT_DIR), config.keep_checkpoints)
    self.unit_start = checkpoints.Checkpointer(
        os.path.join(directory, workdir_lib.UNIT_START_DIR), 1)
    self.writer = None
    self.original_macs: int | None = None

  # Position, state and methods ----------------------------------------------------

  def _model(self, widths):
    model = model_setup.build_model(self.config, self.setup.dataset.num_classes, widths)
    return model, model_setup.trace_graph(model, self.setup.dataset.image_shape)

  def _abstract(self, record: dict[str, Any]) -> TrainState:
    where = self.ckpt.path(self.ckpt.latest_step())
    pos = Position.from_record(record, where)
    model, graph = self._model(pos.widths)
    variables = model_setup.abstract_variables(model, self.setup.dataset.image_shape)

    def make():
      state = c2s2_setup.initial_state(self.setup, graph, variables)
      if pos.unit < len(self.setup.units) and pos.phase in c2s2_optim.PHASES:
        state = c2s2_setup.with_unit(state, graph, self.setup.units[pos.unit])
      return state

    return checkpoints.abstract_like(jax.eval_shape(make),
                                     steps.replicated(self.setup.mesh))

  def _start(self) -> tuple[Position, TrainState]:
    """Position and state at the beginning: the pre-trained model and its reference."""
    model, graph = self._model(self.setup.original_widths)
    variables = checkpoints.load_variables(
        self.config.init_from,
        model_setup.abstract_variables(model, self.setup.dataset.image_shape))
    state = steps.replicate(c2s2_setup.initial_state(self.setup, graph, variables),
                            self.setup.mesh)
    reference = self._evaluate(model, graph, state)
    logging.info('C2S2: pre-trained held-out %s %.4f, loss %.4f (reference).',
                 self.cp.cost_metric, reference[self.cp.cost_metric], reference['loss'])
    pos = Position(unit=0, phase='start', phase_start=0, retry=0,
                   lambdas=self.setup.lambdas, widths=self.setup.original_widths,
                   reference=reference, decisions=[])
    return pos, state

  def _save(self, pos: Position, state: TrainState) -> None:
    checkpoints.check_finite(state, self.config.on_nonfinite, self.ckpt)
    self.ckpt.save(int(state.step), state, pos.record())
    self.ckpt.wait()
    if jax.process_index() == 0:
      workdir_lib.write_text(
          os.path.join(self.workdir, workdir_lib.DECISIONS_FILE),
          ''.join(json.dumps(d, sort_keys=True) + '\n' for d in pos.decisions))

  def _evaluate(self, model, graph, state: TrainState) -> dict[str, Any]:
    """Held-out metrics of the model with the unit's pruning layers (binary)."""
    method = c2s2_setup.selection_method(self.setup, graph, 'phase2', {})
    eval_step = steps.make_eval_step(model, method,
                                     self.setup.dataset.mean, self.setup.dataset.std,
                                     self.setup.mesh, self.setup.task)
    result = experiment.evaluate_source(
        self.setup.dataset.held_out, self.config.eval_batch_size, self.setup.mesh, state,
        eval_step, self.setup.dataset.class_names)
    if self.writer:
      self.writer.write(int(state.step), metrics.SELECTION_SPLITS[1], {
          k: v for k, v in result.items() if isinstance(v, (int, float))})
    return result

  # The schedule -------------------------------------------------------------------

  def run(self) -> dict[str, int]:
    restored = self.ckpt.restore_latest(self._abstract)  # Damaged ones moved aside.
    if jax.process_index() == 0:
      self.writer = metrics.MetricWriter(self.workdir, restored[0] if restored else -1,
                                         splits=metrics.SELECTION_SPLITS)
    try:
      if restored is None:
        pos, state = self._start()
      else:
        latest, state, record = restored
        pos = Position.from_record(record, self.ckpt.path(latest))
        logging.info('C2S2: resuming at step %d (unit %d, %s).', latest, pos.unit,
                     pos.phase)
      while not pos.finished:
        pos, state = self._advance(pos, state)
    finally:
      self.ckpt.wait()
      self.ckpt.close()
      self.unit_start.close()
      if self.writer:
        self.writer.close()
    return pos.widths

  def _advance(self, pos: Position, state: TrainState) -> tuple[Position, TrainState]:
    """One move of the schedule: start a unit, run a phase, or decide after phase 2.

    Each move saves one checkpoint at the step it ends on (never two at one step), with
    the position to continue from in its JSON record.
    """
    units = self.setup.units
    model, graph = self._model(pos.widths)
    if pos.phase == 'start':
      ratio = self._macs_ratio(pos.widths)
      if pos.unit >= len(units) or (self.cp.target_macs_ratio > 0 and ratio <= (
          self.cp.target_macs_ratio * (1 + self.cp.target_tolerance))):
        pos = dataclasses.replace(pos, finished=True)
        self._save(pos, state)
        return pos, state
      if self.unit_start.latest_step() != int(state.step):
        self.unit_start.save(int(state.step), state, pos.record())
        self.unit_start.wait()
      state = steps.replicate(c2s2_setup.with_unit(state, graph, units[pos.unit]),
                              self.setup.mesh)
      pos = dataclasses.replace(pos, phase='phase1', phase_start=int(state.step), retry=0)
      self._save(pos, state)
      return pos, state
    state = self._train_phase(pos, state, model, graph)
    if pos.phase == 'phase1':
      importance = jax.device_get(c2s2_optim.layer_state(state.opt_state).importance)
      masks = selection.binarize_all(jax.device_get(state.params[SCALES_KEY]), importance,
                                     self.cp.min_channels, self.cp.channel_multiple)
      landed = False
      if self.cp.target_macs_ratio > 0:
        masks, landed = selection.land_on_target(
            masks, importance, lambda m: self._macs_ratio(self._masked_widths(pos, graph, m)),
            self.cp.target_macs_ratio, self.cp.target_tolerance, self.cp.channel_multiple)
      state = self._set_masks(state, masks)
      pos = dataclasses.replace(pos, phase='phase2', phase_start=int(state.step),
                                landed=landed)
      self._save(pos, state)
      return pos, state
    return self._check(pos, state, model, graph)

  def _set_masks(self, state: TrainState, masks: dict[str, np.ndarray]) -> TrainState:
    """Fixes the binary masks; kept channels whose scale is 0 (restored) get scale 1."""
    layers = c2s2_optim.layer_state(state.opt_state)
    scales = selection.scales_for_masks(state.params[SCALES_KEY], masks)
    layers = layers._replace(masks={n: np.asarray(m, np.float32) for n, m in masks.items()})
    return steps.replicate(state.replace(
        params={**state.params, SCALES_KEY: scales},
        opt_state=c2s2_optim.with_layer_state(state.opt_state, layers)), self.setup.mesh)

  def _train_phase(self, pos: Position, state: TrainState, model, graph) -> TrainState:
    config, setup = self.config, self.setup
    end = pos.phase_start + setup.phase_steps[pos.phase]
    lambdas = {n: pos.lambdas[n] for n in state.params[SCALES_KEY]}
    step_fn = c2s2_setup.make_train_step(setup, model, graph, pos.phase, lambdas)
    report = runner.Reporting(
        checkpointer=self.ckpt, writer=self.writer, meta=pos.record,
        batch_size=config.batch_size, log_every=config.log_every_steps,
        checkpoint_every=config.checkpoint_every_steps, on_nonfinite=config.on_nonfinite,
        total=end, split=metrics.SELECTION_SPLITS[0],
        label=f'C2S2 unit {pos.unit} {pos.phase}: ', extra=('kept_fraction',))
    batches = data.train_batches(
        setup.dataset.train, batch_size=config.batch_size, seed=config.seed,
        start_step=int(state.step), crop_padding=config.data.crop_padding,
        flip=config.data.flip, process_index=jax.process_index(),
        process_count=jax.process_count())
    try:
      state, reached = runner.run_steps(state, step_fn, batches, int(state.step), end,
                                        setup.mesh, report, save_at_end=False,
                                        stop_at=self.stop_at_step)
    finally:
      batches.close()
    if not reached or int(state.step) == self.stop_at_step:
      raise Interrupted(int(state.step))
    return state

  def _unit_start_state(self, pos: Position, state: TrainState) -> TrainState:
    """The state saved when the unit began (weights, statistics, optimiser state, no
    pruning layers), at `state`'s step so that batches keep following the step."""
    saved, _ = self.unit_start.restore(
        self.unit_start.latest_step(),
        self._abstract(dataclasses.replace(pos, phase='start').record()))
    return saved.replace(step=state.step,
                         first_nonfinite_step=state.first_nonfinite_step,
                         nonfinite_steps=state.nonfinite_steps)

  @staticmethod
  def _masked_widths(pos: Position, graph, masks: dict[str, np.ndarray]) -> dict[str, int]:
    """The widths after surgery with `masks` on the unit's groups."""
    widths = dict(pos.widths)
    for name, mask in masks.items():
      widths = model_setup.with_width(widths, graph.group(name), int(np.sum(mask)))
    return widths

  def _macs_ratio(self, widths: dict[str, int]) -> float:
    n, shape = self.setup.dataset.num_classes, self.setup.dataset.image_shape
    if self.original_macs is None:
      self.original_macs = model_setup.model_macs(self.config, n,
                                                  self.setup.original_widths, shape)
    return model_setup.model_macs(self.config, n, widths, shape) / self.original_macs

  def _check(self, pos: Position, state: TrainState, model,
             graph) -> tuple[Position, TrainState]:
    """The cost check after phase 2, then surgery or a retry."""
    cost = self._evaluate(model, graph, state)
    layers = jax.device_get(c2s2_optim.layer_state(state.opt_state))
    masks = {n: np.asarray(m) > 0 for n, m in layers.masks.items()}
    metric = self.cp.cost_metric
    budget = selection.unit_budget(self.cp.epsilon, pos.unit, len(self.setup.units),
                                   self.cp.budget)
    action = selection.decide(
        selection.within_budget(pos.reference, cost, budget, metric),
        pos.retry, self.cp.max_retries, self.cp.on_over_budget)
    record = {'unit': pos.unit, 'retry': pos.retry, 'action': action,
              'step': int(state.step), 'reference': pos.reference, 'cost': cost,
              'budget': budget, 'landed': pos.landed,
              'layers': {n: {'lambda': pos.lambdas[n], 'channels': int(m.size),
                             'kept': int(m.sum())} for n, m in masks.items()}}
    logging.info('C2S2 unit %d: held-out %s %.4f (reference %.4f), kept %s: %s.',
                 pos.unit, metric, cost[metric], pos.reference[metric],
                 {n: f'{m.sum()}/{m.size}' for n, m in masks.items()}, action)
    decisions = pos.decisions + [record]
    if action == 'restore':
      state = self._set_masks(state, {
          n: selection.restore_half(m, layers.importance[n], self.cp.channel_multiple)
          for n, m in masks.items()})
      pos = dataclasses.replace(pos, phase_start=int(state.step), retry=pos.retry + 1,
                                decisions=decisions, landed=False)
    elif action == 'halve_lambda':
      state = steps.replicate(
          c2s2_setup.with_unit(self._unit_start_state(pos, state), graph, list(masks)),
          self.setup.mesh)
      pos = dataclasses.replace(
          pos, phase='phase1', phase_start=int(state.step), retry=pos.retry + 1,
          lambdas={**pos.lambdas, **{n: pos.lambdas[n] / 2 for n in masks}},
          decisions=decisions, landed=False)
    else:
      if action == 'give_up':  # The unit as it started: every channel, its weights.
        state = steps.replicate(self._unit_start_state(pos, state), self.setup.mesh)
      else:
        state = steps.replicate(operate(jax.device_get(state), graph, masks),
                                self.setup.mesh)
      widths = models.kernel_widths(c2s2_setup.model_params(state), pos.widths)
      record['macs_ratio'] = self._macs_ratio(widths)
      # Saved by the next unit's start, at this same step.
      return dataclasses.replace(pos, unit=pos.unit + 1, phase='start', retry=0,
                                 widths=widths, decisions=decisions, landed=False), state
    self._save(pos, state)
    return pos, state


def select(config: ml_collections.ConfigDict, workdir: str,
           stop_at_step: int | None = None) -> ml_collections.ConfigDict | None:
  """Runs or resumes selection; returns the config of the compact model's fine-tune.

  Writes the compact widths to `workdir/widths.json` (read by the experiment) and
  points `init_from` at the selection's final checkpoint. Returns None if selection
  stopped at `stop_at_step`.
  """
  try:
    widths = Driver(config, workdir, stop_at_step).run()
  except Interrupted:
    return None
  return model_setup.finetune_config(config, workdir, widths)

