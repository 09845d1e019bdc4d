"""The `cpu` preset shared by the CIFAR-10 tables: a converged ResNet-20 on 2 CPU cores.

Every row holds out the 5,000 training images C2S2's cost check uses, so one dense run
(`DENSE`, 50 epochs) starts every pruned row, and every pruned row fine-tunes with one
budget (`FINETUNE`, an eighth of the dense epochs), so rows differ only by method.
Batch 32 is the batch at which our ResNet-20 step trains the most images per second
on these cores (benchmarks/latest.json, pytorch_reference: 301 images/s at 32, 257 at
64, 232 at 128). The dense schedule: lr 0.05 at batch 32 (twice the common short
CIFAR ResNet recipe's lr 0.1 at batch 128 scaled linearly), weight decay 5e-4, Nesterov
momentum 0.9, cosine over 50 epochs (METHODS.md's 160 epochs of steps use 1e-4): the
best of the three tried, and its final variables are kept in results/checkpoints/cpu.
Measured, test top-1 after 50 epochs (final training accuracy): lr 0.05 and weight
decay 5e-4, 0.876 (0.935); lr 0.025 and 5e-4, 0.874 (0.934); lr 0.025 and 1e-4,
0.862 (0.944; ahead of 5e-4 until epoch 35, then behind). None reaches the 0.905
issue 15 asks for within 2.5 hours. The cap is the data and the epochs, not our
pipeline: an independent PyTorch ResNet-20 on the same 45,000 images with the same
schedule (benchmarks/torch_cifar_reference.py, lr 0.025, wd 5e-4) reached 0.873
(training accuracy 0.939), its test curve within 2.3 points of ours at every fifth epoch
(results/torch_reference/).
At our ~310 images/s, 2.5 hours hold about 58 epochs; PyTorch trains 2.3x faster here
(717 images/s). The fine-tunes run at lr 0.005 (the batch-64 fine-tunes' 0.01, halved);
the tables report what the rows reached.
"""

DENSE_CONFIG = 'configs/resnet20_cpu.py'
BASELINES = 'configs/resnet20_baselines_cpu.py'
CCI = 'configs/resnet20_cci_cpu.py'
C2S2 = 'configs/resnet20_c2s2_cpu.py'
KEY_SEEDS = 3  # Fine-tune seeds of the key comparisons.

_COMMON = {'data.held_out': 5000, 'batch_size': 32, 'optimizer.weight_decay': 5e-4,
           'eval_every_steps': 0}
DENSE = {**_COMMON, 'num_epochs': 50.0, 'optimizer.learning_rate': 0.05,
         'optimizer.schedule': 'cosine', 'optimizer.warmup_epochs': 1.0,
         'eval_every_steps': 7000}  # Test top-1 about every 5 epochs: the curve.
FINETUNE = {**_COMMON, 'num_epochs': 6.0, 'optimizer.learning_rate': 0.005,
            'optimizer.schedule': 'cosine', 'optimizer.warmup_epochs': 0.0}
# C2S2's selection before the fine-tune: one group per step, half an epoch of the
# real-valued phase and a quarter of the binary one; the held-out budget paced along the
# nine units up to a 5-point drop before the fine-tune (halving the MACs of a converged
# ResNet-20 costs more than METHODS.md's 0.5 point until the compact model fine-tunes);
# the weights train at lr 0.0005, 1% of the dense peak: at the fine-tune's 0.005 the
# first unit lost 2.9 held-out points with all 16 channels kept (training a converged,
# annealed ResNet-20 at a constant 0.005 costs that by itself), so the cost check gave
# up every unit; at 0.0005 the first unit kept 4 of 16 channels for 0.54 points.
# Lambda 0.05: phase 1 drives nearly every scale to zero within half an epoch, so the
# kept channels are those the cost check restores in order of accumulated phase-1
# magnitude; lambda 0.01 zeroed no scale in the first four units (held-out 0.871-0.875,
# all 16 or 32 channels kept: the c2s2_2x row's command with
# --config.channel_pruning.lambda_l1=0.01), so it was stopped there.
SELECTION = {'channel_pruning.layers_per_step': 1, 'channel_pruning.phase1_epochs': 0.5,
             'channel_pruning.phase2_epochs': 0.25, 'channel_pruning.lambda_l1': 0.05,
             'channel_pruning.epsilon': 0.05, 'channel_pruning.budget': 'paced',
             'channel_pruning.weight_learning_rate': 0.0005,
             'channel_pruning.channel_multiple': 4}
# MACs ratio of CCI k of 8 on ResNet-20 (the 3-channel stem stays dense): the point at
# which the L1-filter rows of the CCI table prune.
CCI_MACS_RATIO = {2: 0.258, 1: 0.134}
