"""C2S2 (cost-aware channel sparse selection): pruning layers, selection and surgery.

See ../shared/METHODS.md section 2 and docs/methods.md (C2S2 channel selection). Pure
functions and a small Flax module; the progressive driver lives in `train.c2s2_driver`.
"""

from c2s2 import nnx
from c2s2.compact import CompactApplyError, compact_apply, compact_layers
from c2s2.graph import ChannelGraph, ChannelGroup, Coupling, trace_channel_graph
from c2s2.layer import MODES, PruningLayer, prune_channels, pruning_layers
from c2s2.selection import (BUDGETS, ON_OVER_BUDGET, binarize, cost_weights, decide,
                            land_on_target, proximal_sgd_step, restore, restore_order,
                            round_up, soft_threshold, unit_budget, within_budget)
from c2s2.surgery import (fold_scale, fold_scales, foldable, plan, slice_params_like,
                          slice_variables)

__all__ = [
    'BUDGETS', 'MODES', 'ON_OVER_BUDGET', 'ChannelGraph', 'ChannelGroup', 'CompactApplyError',
    'Coupling', 'PruningLayer', 'nnx', 'binarize', 'compact_apply', 'compact_layers',
    'cost_weights', 'decide', 'fold_scale', 'fold_scales', 'foldable', 'land_on_target',
    'plan',
    'proximal_sgd_step',
    'prune_channels', 'pruning_layers', 'restore', 'restore_order', 'round_up',
    'slice_params_like', 'slice_variables', 'soft_threshold', 'trace_channel_graph',
    'unit_budget', 'within_budget',
]
