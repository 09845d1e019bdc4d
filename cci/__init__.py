"""CCI (cross-channel intragroup) sparsity as pure functions over kernels and pytrees.

See ../shared/METHODS.md section 1 and the README's CCI section.
"""

from cci.api import spec_for
from cci.masks import (GRANULARITIES, KernelDecision, cci_mask, check_grouping,
                       decisions_table, kept_per_group, magnitude_mask,
                       select_kernels)
from cci.packing import pack, packed_apply, unpack
from cci.schedules import cubic_density, kept_count
from cci.sparsify import (METHODS, PATTERNS, SparsitySpec, SparsityState, compute_masks,
                          find_state, forward_params, sparsify)

__all__ = [
    'GRANULARITIES', 'KernelDecision', 'cci_mask', 'check_grouping', 'decisions_table',
    'kept_per_group', 'magnitude_mask', 'select_kernels', 'pack', 'packed_apply', 'unpack', 'cubic_density',
    'kept_count', 'METHODS', 'PATTERNS', 'SparsitySpec', 'SparsityState', 'compute_masks', 'find_state',
    'forward_params', 'sparsify', 'spec_for',
]
