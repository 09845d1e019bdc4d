"""The c2s2 package: its names load their modules on first use, and only those."""

import subprocess
import sys

from tests.test_main import ROOT

PUBLIC = ('BUDGETS', 'MODES', 'ON_OVER_BUDGET', 'ChannelGraph', 'ChannelGroup',
          'CompactApplyError', 'Coupling', 'PruningLayer', 'binarize', 'compact_apply',
          'compact_layers', 'cost_weights', 'decide', 'fold_scale', 'fold_scales',
          'foldable', 'land_on_target', 'plan', 'proximal_sgd_step', 'prune_channels',
          'pruning_layers', 'restore', 'restore_order', 'round_up', 'slice_params_like',
          'slice_variables', 'soft_threshold', 'trace_channel_graph', 'unit_budget',
          'within_budget')


def test_tracing_the_graph_loads_no_selection_code():
  code = ('import sys, c2s2\n'
          'from c2s2 import graph\n'
          'assert c2s2.trace_channel_graph is graph.trace_channel_graph\n'
          'print(sorted(m for m in sys.modules if m.startswith("c2s2")))\n')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split('\n')[0] == \
      "['c2s2', 'c2s2.graph', 'c2s2.heads', 'c2s2.jaxpr_tags']"


def test_every_public_name_resolves_to_its_defining_module():
  import c2s2
  from c2s2 import graph, selection, surgery
  for name in PUBLIC:
    value = getattr(c2s2, name)
    assert getattr(value, '__module__', 'c2s2.').startswith('c2s2.'), name
  assert c2s2.binarize is selection.binarize and c2s2.plan is surgery.plan
  assert c2s2.ChannelGraph is graph.ChannelGraph  # Not surgery's import of it.
  assert c2s2.nnx.__name__ == 'c2s2.nnx'
  for missing in ('np', 'jax', 'no_such_name', '_private'):
    try:
      getattr(c2s2, missing)
    except AttributeError as e:
      assert repr(missing) in str(e)
    else:
      raise AssertionError(f'c2s2.{missing} resolved')
