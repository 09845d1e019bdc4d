"""CCI (cross-channel intragroup) sparsity: pure functions over kernels and pytrees.

Implemented in the CCI issue; see ../shared/METHODS.md section 1.
"""
