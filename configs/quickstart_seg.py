r"""Quickstart for segmentation: a U-Net on composed digits, dense, then C2S2 and CCI.

  python main.py --config=configs/quickstart_seg.py --workdir=/tmp/quickstart_seg
  python main.py --config=configs/quickstart_seg.py:c2s2 --workdir=/tmp/quickstart_seg_c2s2
  python main.py --config=configs/quickstart_seg.py:cci --workdir=/tmp/quickstart_seg_cci
  python main.py --config=configs/quickstart_seg.py:l1_filter --workdir=/tmp/quickstart_seg_l1

Canvases of 32x32 pixels composed from scikit-learn's handwritten digits (nothing to
download; train/seg_data.py): 11 classes (background and the ten digits), 1,000
training canvases of which 200 are held out for C2S2's cost check, 200 test canvases.
Background covers ~89% of the pixels, so the loss weights it 0.1 (data.class_weights);
the dense U-Net trains 24 epochs (1,200 steps of 16) at lr 0.1, cosine. `c2s2` prunes
the channels of the finished dense run in /tmp/quickstart_seg with the cost check on
held-out mIoU (epsilon 0.1 = 10 mIoU points, checked before the final fine-tune); `cci`
trains 2 of 8 with the dynamic algorithm from scratch; `l1_filter` is the L1-norm
filter-pruning baseline (30% of every prunable group). `c2s2` and `l1_filter` fine-tune
6 epochs at lr 0.01.

Expect (measured 2026-12-02 by `python -m train.reproduce --table=segmentation_digits`,
whose rows are these variants, on the 2-core x86 CPU of this project's machines): dense
test mIoU 0.799 (background IoU 0.98, digits 0.75-0.82), pixel accuracy 0.975, 25.3M
MACs; `c2s2` mIoU 0.802 with 16.1M MACs and 80,604 of 117,579 parameters (units
accepted at held-out mIoU 0.731, 0.757 and 0.784 against 0.799, after 1, 2 and 0
restores); `cci` mIoU 0.670 at density 0.253 (3.8x projected speedup); `l1_filter`
mIoU 0.790 with 13.6M MACs. Time of the whole command on the idle machine (the first
two commands above, measured again at revision 5dc98ab with the same mIoU): dense 66 s,
`c2s2` 122 s; `cci` 154 s and `l1_filter` 119 s were measured while other jobs loaded
the CPU to a load average of ~9 (the dense run took 200 s at that load).
"""

from configs import base, baseline_schedules, c2s2_schedules, cci_schedules

DENSE_WORKDIR = '/tmp/quickstart_seg'
VARIANTS = ('dense', 'c2s2', 'cci', 'l1_filter')
BACKGROUND_WEIGHT = 0.1


def get_config(variant: str = 'dense'):
  if variant not in VARIANTS:
    raise ValueError(f'configs/quickstart_seg.py:{variant}; choose one of {VARIANTS}.')
  config = base.get_base_config()
  config.model.name = 'unet'
  config.data.source = 'seg_digits'
  config.data.image_size = 32
  config.data.canvases_train = 1000
  config.data.canvases_test = 200
  config.data.held_out = 200  # Never trained on: C2S2's cost check uses them.
  config.data.scale_range = (0.8, 1.25)
  config.data.flip = False  # Mirrored digits are other symbols.
  # Background is ~89% of the pixels: at weight 1 the U-Net learns ink vs background
  # but hardly which digit (see the README's Segmentation section).
  config.data.class_weights = (BACKGROUND_WEIGHT,) + (1.0,) * 10
  config.batch_size = 16
  config.eval_batch_size = 50
  config.num_epochs = 24.0
  config.optimizer.learning_rate = 0.1
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 0.5
  config.optimizer.weight_decay = 5e-4
  config.log_every_steps = 25
  config.checkpoint_every_steps = 100
  if variant == 'c2s2':
    c2s2_schedules.apply(config, DENSE_WORKDIR)
    cp = config.channel_pruning
    cp.cost_metric = 'miou'
    # Held-out mIoU after phase 2, before the final fine-tune: 10 points (a 15/16
    # channels unit already costs ~5 after one epoch of phase 2).
    cp.epsilon = 0.1
    cp.layers_per_step = 4  # 12 prunable groups in 3 units.
    # The scales' task gradients are small here: lambda >= 0.15 prunes a unit to
    # ~2-5 channels a group whatever their use; 0.05 with a fast scale lr selects.
    cp.lambda_l1 = 0.05
    cp.scale_learning_rate = 0.5
    cp.phase1_epochs = 1.0
    cp.phase2_epochs = 1.0
    cp.latency_batch = 32
  elif variant == 'cci':
    cci_schedules.apply(config, 'dynamic', DENSE_WORKDIR)
  elif variant == 'l1_filter':
    baseline_schedules.apply(config, 'l1_filter', DENSE_WORKDIR)
    config.channel_pruning.latency_batch = 32
  return config
