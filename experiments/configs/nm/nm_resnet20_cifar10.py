"""python -m experiments.nm --config experiments/configs/nm/nm_resnet20_cifar10.py --data-dir DIR

GPU-cluster config: 2:4 ResNet-20 on CIFAR-10 (45k / 5k / 10k, flip + 4-px crop), SGD
momentum 0.9, lr 0.1 (x0.1 at 80 and 120 epochs), wd 1e-4, batch 128, 160 epochs (56,160
iterations at 351 per epoch of the 45k training split) per training run — the open_lth
schedule that Frankle et al. 2020 use; the fine-tune and SR-STE runs repeat that schedule
(ASP: "fine-tune with the original schedule"). Groups run along C_in; every conv (C_in = 16,
32, 64, incl. the 1x1 projections) and the head (K = 64) are 2:4; the stem conv (C_in = 3)
stays dense.

Not run by us (no GPU in this session). What to expect: dense ~91.7% (open_lth); NVIDIA ASP
is reported to recover dense accuracy across vision models, and SR-STE's 2:4 ResNet-50 on
ImageNet reaches 77.0 vs 77.3 dense — so one-shot + fine-tune and SR-STE should land within
a few tenths of a point of dense; a gap above ~1 point would point to a bug.
"""

import ml_collections

from experiments.configs import base

EPOCH = 351  # iterations per epoch: 45,000 / 128


def get_config() -> ml_collections.ConfigDict:
    return base.nm(
        "nm_resnet20_cifar10", dataset="cifar10", **base.model("resnet20"), augment=True,
        optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
        lr_milestones=(80 * EPOCH, 120 * EPOCH), lr_gamma=0.1, batch_size=128,
        num_steps=160 * EPOCH, eval_every=5 * EPOCH, n=2, m=4, lambda_w=2e-4,
        prunable=(("^stem/", False),),  # stem conv: C_in = 3, not a multiple of 4
        methods=("dense", "one_shot", "one_shot_finetune", "sr_ste"))
