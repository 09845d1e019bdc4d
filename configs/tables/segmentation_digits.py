"""Segmentation on composed digits: dense, L1 filter, C2S2 and CCI 2 of 8 (U-Net).

  python -m train.reproduce --table=segmentation_digits --preset=cpu

A U-Net on 32x32 canvases composed from scikit-learn's handwritten digits (11 classes:
background and the ten digits; nothing to download), each row exactly its variant of
configs/quickstart_seg.py: dense (24 epochs of 800 canvases, background weighted 0.1 in
the loss; 200 more held out), L1-norm filter pruning of 30% of every prunable group and
C2S2 (cost check on held-out mIoU, epsilon 0.1) each fine-tuning the dense row for 6
epochs at lr 0.01, CCI 2 of 8 `dynamic` from scratch on the dense schedule. mIoU
(background included) and pixel accuracy on the 200 test canvases; MACs per 32x32
canvas. Both presets are the same table.
"""

from train.tables import (COST_CHECK, Column, Row, Table, latency_ms, macs_millions,
                          summary)

CONFIG = 'configs/quickstart_seg.py'
COLUMNS = (
    Column('mIoU', summary('miou')),
    Column('pixel accuracy', summary('top1')),
    Column('MACs (M)', macs_millions, '{:.2f}'),
    Column('params', summary('params'), '{:,.0f}'),
    Column('CPU latency, batch 128 (ms)', latency_ms, '{:.1f}'),
    Column('wall (s)', lambda r: r['wall_time_s'], '{:.0f}'),
    COST_CHECK,
)


def get_table(preset: str) -> Table:
  del preset  # One schedule: minutes on any machine.
  rows = (
      Row('seg_dense', 'dense', 'dense', CONFIG),
      Row('seg_l1_filter', 'L1 filter (30%)', 'L1 filter', f'{CONFIG}:l1_filter',
          start_from='seg_dense'),
      Row('seg_c2s2', 'C2S2 (mIoU cost check)', 'C2S2', f'{CONFIG}:c2s2',
          start_from='seg_dense'),
      Row('seg_cci', 'CCI 2 of 8 dynamic', 'CCI dynamic', f'{CONFIG}:cci'),
  )
  return Table('segmentation_digits', 'Segmentation: U-Net on composed digits',
               __doc__.split('\n\n', 2)[2], rows, COLUMNS)
