"""Shared defaults for every experiment config.

Each experiment file calls `get_base_config()` and changes what differs. Every key
here can be overridden on the command line (`--config.optimizer.learning_rate=0.05`);
the config is locked, so a misspelled key stops the run with an error naming it.
"""

import ml_collections

SHARED_CIFAR10 = '../shared/data/cifar10-jpeg.tar.gz'


def get_base_config() -> ml_collections.ConfigDict:
  """CIFAR-10 ResNet defaults of METHODS.md section 4 (accelerator schedule)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.name = 'resnet20'  # resnet{8,14,20,32,44,56,110}, vgg16, resnet18/50.
  config.model.shortcut = 'A'  # CIFAR ResNets: 'A' zero-pad (He et al.), 'B' 1x1 conv.
  config.model.widths = ''  # Per-conv widths: a JSON file or inline JSON; '' = default.
  config.model.dtype = 'float32'  # Compute dtype; params stay float32.
  # VGG's convs: 'auto' (patches + matmul where XLA:CPU's conv is pathological),
  # 'xla' or 'patches'; all give the same numbers to float rounding.
  config.model.conv_impl = 'auto'


  config.data = ml_collections.ConfigDict()
  # 'folder' (dir or .tar[.gz]), 'tfds', 'digits'; segmentation (labels are masks,
  # train/seg_data.py): 'seg_digits' (composed digits), 'seg_folder', 'seg_tfds'.
  config.data.source = 'folder'
  config.data.path = SHARED_CIFAR10  # For 'folder': ROOT/SPLIT/CLASS/*.jpg|png.
  config.data.name = 'cifar10'  # For 'tfds': a tfds dataset name.
  config.data.data_dir = ''  # For 'tfds': '' = tfds default.
  config.data.manual_dir = ''  # For 'tfds': manually downloaded archives.
  config.data.cache_dir = ''  # Decoded-array cache; '' = ~/.cache/cci_c2s2.
  config.data.image_size = 32
  config.data.train_split = 'train'
  config.data.test_split = 'test'
  config.data.crop_padding = 4  # Pad-and-random-crop; 0 disables.
  config.data.flip = True  # Random horizontal flip.
  # Segmentation: the mask value counted nowhere, and the random scale of the training
  # crops of image_size pixels (joint scale-crop and flip; crop_padding does not apply).
  config.data.ignore_label = 255
  config.data.scale_range = (1.0, 1.0)
  # Training-loss weight of each class (train/tasks.py), e.g. a background weight
  # below 1 when it covers most pixels; () = all 1.
  config.data.class_weights = ()
  # Training-loss label smoothing in [0, 1): the target puts this much probability
  # mass spread evenly over all classes (evaluation loss stays unsmoothed).
  config.data.label_smoothing = 0.0
  config.data.canvases_train = 2000  # 'seg_digits': composed canvases per split...
  config.data.canvases_test = 500
  config.data.digits_per_canvas = 3  # ...with 1 to this many digits each...
  config.data.canvas_seed = 0  # ...drawn from this seed (not config.seed).
  config.data.image_key = 'image'  # 'seg_tfds': features of image and mask...
  config.data.mask_key = 'segmentation_mask'
  config.data.num_classes = 0  # ...and the number of classes (required).
  config.data.canvas_size = 0  # 'seg_tfds' with images of varying size: canvas side.
  # Encoded images decoded per use (large tfds datasets always; a 'folder' directory
  # with per_example=True): Inception random-resized crop for training (not
  # crop_padding), eval resizes the shorter side to eval_resize (0: 1.14 * image_size)
  # and center-crops; `workers` grain processes decode (0: in this process), each with
  # `worker_threads` threads (0: its main thread; one worker is then one core, so set
  # workers to the cores the host can spare for decoding).
  config.data.per_example = False
  config.data.eval_resize = 0
  config.data.workers = 2
  config.data.worker_threads = 0
  # Training images carved out by a fixed seed and never trained on (0: none). C2S2's
  # cost check evaluates them; pre-train the dense start with the same value, or its
  # reference is measured on images it memorised.
  config.data.held_out = 0

  config.batch_size = 128  # Global batch, split over all devices.
  config.eval_batch_size = 500
  config.num_epochs = 160.0
  config.num_train_steps = -1  # > 0 overrides num_epochs.

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = 'step'  # 'step', 'cosine' or 'constant'.
  config.optimizer.boundaries = (0.5, 0.75)  # 'step': fractions of training.
  config.optimizer.decay_factor = 0.1  # 'step': lr multiplier at each boundary.
  config.optimizer.warmup_epochs = 0.0  # Linear warm-up from 0.
  config.optimizer.norm_scale_l1 = 0.0  # L1 on norm scales (network slimming's training).

  config.init_from = ''  # A workdir whose latest params and batch stats start this run.

  # CCI sparsity (METHODS.md 1); 'none' trains dense.
  config.sparsity = ml_collections.ConfigDict()
  config.sparsity.method = 'none'  # 'none', 'oneshot', 'gradual', 'dynamic'.
  config.sparsity.group_size = 8  # g: consecutive input channels per group.
  config.sparsity.keep = 2  # k: weights kept per group.
  config.sparsity.granularity = 'tap'  # 'tap' or 'kernel' (whole kh x kw slices).
  config.sparsity.include = ''  # Regex on kernel paths; '' = every divisible kernel.
  config.sparsity.exclude = ''  # Regex on kernel paths kept dense.
  config.sparsity.begin_fraction = 0.0  # Kept count starts falling from g here...
  config.sparsity.end_fraction = 0.3  # ...and reaches k here (fractions of training).
  config.sparsity.update_every = 100  # gradual: steps between mask updates.
  config.sparsity.refinement = 2e-4  # dynamic: SR-STE weight on pruned weights.
  config.sparsity.freeze_fraction = 0.1  # dynamic: last fraction with a fixed mask.
  # 'cci', or 'unstructured': the magnitude-pruning baseline at density keep/group_size
  # per chosen kernel (Zhu & Gupta with method 'gradual').
  config.sparsity.pattern = 'cci'

  # Channel pruning (METHODS.md 2): 'c2s2' selects channels progressively from the
  # dense model in config.init_from, removes them, then trains the compact model with
  # num_epochs / optimizer above (the final fine-tune).
  config.channel_pruning = ml_collections.ConfigDict()
  # 'none', 'c2s2', or the one-shot baselines 'l1_filter' (Li et al.: the same fraction
  # of each group by filter L1 norm) and 'slimming' (Liu et al.: global threshold on
  # norm scales; train with optimizer.norm_scale_l1 first).
  config.channel_pruning.method = 'none'
  config.channel_pruning.prune_fraction = 0.5  # Baselines: fraction of channels removed.
  config.channel_pruning.include = ''  # Regex on group names ('' = all prunable).
  config.channel_pruning.exclude = ''  # Regex on group names left whole.
  config.channel_pruning.prune_residual_stream = False  # Also prune joined streams.
  config.channel_pruning.layers_per_step = 1  # Groups selected together.
  config.channel_pruning.lambda_l1 = 0.03  # L1 strength on the pruning scales.
  config.channel_pruning.cost_weighting = False  # lambda x MACs per channel / mean.
  config.channel_pruning.phase1_epochs = 1.0  # Real-valued selection per step.
  config.channel_pruning.phase2_epochs = 0.5  # Binary fine-tune per step.
  config.channel_pruning.scale_learning_rate = 0.1
  config.channel_pruning.weight_learning_rate = 0.01
  config.channel_pruning.train_weights_in_phase1 = True
  config.channel_pruning.epsilon = 0.005  # Allowed held-out drop of cost_metric...
  # ...from the first unit on ('cumulative'), or growing to epsilon along the units
  # ('paced': epsilon * units done / units; c2s2.selection.unit_budget).
  config.channel_pruning.budget = 'cumulative'
  config.channel_pruning.cost_metric = 'top1'  # ...'top1', or 'miou' (segmentation).
  config.channel_pruning.max_retries = 3
  config.channel_pruning.on_over_budget = 'restore'  # or 'halve_lambda'.
  config.channel_pruning.min_channels = 2
  config.channel_pruning.channel_multiple = 1  # Round kept channels up to a multiple.
  # c2s2: stop at this MACs ratio (0: never); baselines: prune the least fraction that
  # reaches it (overrides prune_fraction).
  config.channel_pruning.target_macs_ratio = 0.0
  # c2s2: stop within this fraction above the target; a unit's binarisation keeps
  # channels so that the ratio stays above target * (1 - target_tolerance).
  config.channel_pruning.target_tolerance = 0.03
  config.channel_pruning.latency_batch = 128  # Batch of the latency measurement.

  config.log_every_steps = 50
  config.eval_every_steps = 0  # 0: evaluate at the end only.
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.on_nonfinite = 'stop'  # 'stop' (error, last checkpoint kept) or 'skip'.
  return config
