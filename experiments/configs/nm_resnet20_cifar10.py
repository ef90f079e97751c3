"""python -m experiments.nm --config experiments/configs/nm_resnet20_cifar10.py --data-dir DIR

GPU-cluster config: 2:4 ResNet-20 on CIFAR-10 (45k / 5k / 10k, flip + 4-px crop), SGD
momentum 0.9, lr 0.1 (x0.1 at 80 and 120 epochs), wd 1e-4, batch 128, 160 epochs (62,400
iterations) per training run — the open_lth schedule that Frankle et al. 2020 use; the
fine-tune and SR-STE runs repeat that schedule (ASP: "fine-tune with the original schedule").
Groups run along C_in; every conv (C_in = 16, 32, 64, incl. the 1x1 projections) and the
head (K = 64) are 2:4; the stem conv (C_in = 3) stays dense.

Not run by us (no GPU in this session). What to expect: dense ~91.7% (open_lth); NVIDIA ASP
is reported to recover dense accuracy across vision models, and SR-STE's 2:4 ResNet-50 on
ImageNet reaches 77.0 vs 77.3 dense — so one-shot + fine-tune and SR-STE should land within
a few tenths of a point of dense; a gap above ~1 point would point to a bug.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "nm_resnet20_cifar10"
    c.dataset = "cifar10"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.val_size = ml_collections.FieldReference(None, field_type=int)
    c.model = "resnet20"
    c.model_kwargs = ml_collections.ConfigDict({})
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.lr_milestones = (31200, 46800)  # epochs 80 and 120 at 390 iterations per epoch
    c.lr_gamma = 0.1
    c.batch_size = 128
    c.num_steps = 62400
    c.eval_every = 1950
    c.augment = True
    c.seed = 0
    c.n = 2
    c.m = 4
    c.lambda_w = 2e-4
    c.prunable = (("^stem/", False),)  # stem conv: C_in = 3, not a multiple of 4
    c.methods = ("dense", "one_shot", "one_shot_finetune", "sr_ste")
    return c
