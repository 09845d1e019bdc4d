"""Training-step time of dense against CCI and C2S2's pruning layers.

  python -m benchmarks --only=train_step

Per model and batch, interleaved in one run: the dense step (train/steps.py), CCI
`dynamic` (mask recomputed every step, straight-through) and a fixed CCI mask
(`oneshot`), and C2S2's selection step (train/c2s2_setup.py) with a pruning layer on
every prunable channel group at once, in real mode (phase 1: scales trained with the
proximal L1 step) and binary mode (phase 2: fixed masks). Every variant uses the same
optimiser; ratios are to dense. ResNet-50 runs at a reduced image size on CPU.
"""

import types
from typing import Any, Callable

import jax

from benchmarks import common
from train import c2s2_setup, model_setup, optim, steps, timing

VARIANTS = ('dense', 'cci_dynamic', 'cci_fixed_mask', 'c2s2_real', 'c2s2_binary')
CCI_METHODS = {'dense': 'none', 'cci_dynamic': 'dynamic', 'cci_fixed_mask': 'oneshot'}
C2S2_PHASES = {'c2s2_real': 'phase1', 'c2s2_binary': 'phase2'}
TARGETS = {'cci_dynamic': 1.10, 'cci_fixed_mask': 1.05, 'c2s2_real': 1.05,
           'c2s2_binary': 1.05}
# (model, batch, image size, classes): 23 and 49 GFLOP per dense step, ~0.5-0.8 s and
# ~1-1.6 s on 2 cores; compiling the five variants takes ~1 and ~2 minutes.
FULL = (('resnet56', 32, 32, 10), ('resnet50', 8, 112, 1000))
SMOKE = (('resnet8', 8, 32, 10),)
REPEATS = {False: 15, True: 2}


def c2s2_steps(model_name: str, batch_size: int, image_size: int,
               num_classes: int) -> dict[str, Callable[[], jax.Array]]:
  """C2S2's selection step per mode, with scales for every prunable channel group."""
  b = common.bench(model_name, batch_size, image_size, num_classes)
  cfg = common.config()
  graph = model_setup.trace_graph(b.model, (image_size, image_size, 3))
  names = model_setup.candidate_groups(graph, cfg.channel_pruning)
  schedule = optim.make_schedule(cfg.optimizer, common.TOTAL_STEPS, 100)
  lambdas = {n: cfg.channel_pruning.lambda_l1 for n in names}
  setup = c2s2_setup.Setup(
      config=cfg, dataset=types.SimpleNamespace(mean=common.MEAN, std=common.STD),
      mesh=b.mesh, tx=optim.make_optimizer(cfg.optimizer, schedule), schedule=schedule,
      steps_per_epoch=1,
      phase_steps={}, original_widths={}, units=[names], lambdas=lambdas)
  fns = {}
  for name, phase in C2S2_PHASES.items():
    step = c2s2_setup.make_train_step(setup, b.model, graph, phase, lambdas)
    state = c2s2_setup.with_unit(
        c2s2_setup.initial_state(setup, graph, common.fresh(b.variables)), graph, names)
    fns[name] = common.runner(step, jax.device_put(state, steps.replicated(b.mesh)),
                              b.batch)
  return fns


def step_fns(model_name: str, batch_size: int, image_size: int = 32,
             num_classes: int = 10) -> dict[str, Callable[[], Any]]:
  """One jitted train step per variant, each on its own state and the same batch."""
  fns = {name: common.train_step(model_name, batch_size, image_size, method,
                                 num_classes)
         for name, method in CCI_METHODS.items()}
  return {**fns, **c2s2_steps(model_name, batch_size, image_size, num_classes)}


def compare(model_name: str, batch_size: int, image_size: int, num_classes: int,
            repeats: int) -> list[common.Entry]:
  """Seconds per step of every variant and its ratio to dense."""
  seconds = timing.interleaved(step_fns(model_name, batch_size, image_size, num_classes),
                               repeats)
  prefix = f'train_step/{model_name}{common.px(image_size)}/b{batch_size}'
  return [common.entry(f'{prefix}/{name}', seconds[name], f'{prefix}/dense',
                       seconds['dense'], TARGETS.get(name))
          for name in VARIANTS]


def measure(smoke: bool) -> list[common.Entry]:
  """Entries of every model size (tiny ones with `smoke`)."""
  return [e for size in (SMOKE if smoke else FULL)
          for e in compare(*size, REPEATS[smoke])]
