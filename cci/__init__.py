"""CCI (cross-channel intragroup) sparsity as pure functions over kernels and pytrees.

See ../shared/METHODS.md section 1 and docs/methods.md (CCI sparsity).
"""

from cci import nnx
from cci.api import spec_for
from cci.masks import (GRANULARITIES, KernelDecision, cci_mask, check_grouping,
                       decisions_table, kept_per_group, magnitude_mask,
                       select_kernels)
from cci.packing import pack, packed_apply, unpack
from cci.schedules import cubic_density, kept_count
from cci.sparsify import (METHODS, PATTERNS, SparsitySpec, SparsityState, compute_masks,
                          find_state, forward_params, sparsify)

__all__ = [
    'GRANULARITIES', 'KernelDecision', 'METHODS', 'PATTERNS', 'SparsitySpec',
    'SparsityState', 'cci_mask', 'check_grouping', 'compute_masks', 'cubic_density',
    'decisions_table', 'find_state', 'forward_params', 'kept_count', 'kept_per_group',
    'magnitude_mask', 'pack', 'packed_apply', 'select_kernels', 'sparsify', 'spec_for',
    'nnx', 'unpack',
]
