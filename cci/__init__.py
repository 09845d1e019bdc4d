"""CCI (cross-channel intragroup) sparsity as pure functions over kernels and pytrees.

See ../shared/METHODS.md section 1 and the README's CCI section.
"""

from cci.masks import (GRANULARITIES, KernelDecision, cci_mask, check_grouping,
                       decisions_table, kept_per_group, select_kernels)
from cci.packing import pack, packed_apply, unpack
from cci.schedules import cubic_density, kept_count
from cci.sparsify import (METHODS, SparsitySpec, SparsityState, compute_masks,
                          find_state, forward_params, sparsify)

__all__ = [
    'GRANULARITIES', 'KernelDecision', 'cci_mask', 'check_grouping', 'decisions_table',
    'kept_per_group', 'select_kernels', 'pack', 'packed_apply', 'unpack', 'cubic_density',
    'kept_count', 'METHODS', 'SparsitySpec', 'SparsityState', 'compute_masks', 'find_state',
    'forward_params', 'sparsify',
]
