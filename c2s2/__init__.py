"""C2S2 (cost-aware channel sparse selection): pruning layers and channel surgery.

Implemented in the C2S2 issue; see ../shared/METHODS.md section 2.
"""
