"""python -m experiments.lottery \\
    --config experiments/configs/lottery/frankle2020_cifar10.py:resnet20 --data-dir DIR

Frankle, Dziugaite, Roy & Carbin 2020 (ICML), rewinding on CIFAR-10 (45k / 5k / 10k, flip +
4-pixel crop; ``:resnet20`` or ``:vgg16``): ResNet-20 (16-32-64, batch norm) or VGG-16 with
batch norm, both with the open_lth recipe: SGD momentum 0.9, lr 0.1, batch 128, 160 epochs
(56,160 iterations at 351 per epoch), lr x0.1 at epochs 80 and 120, weight decay 1e-4; global
magnitude pruning of 20% of the remaining weights per level, rewind to iteration k, 3
replicates, random re-initialisation and random pruning controls.

    model     output layer  k     levels  should reach (paper, approximate)
    resnet20  pruned        2000  12      dense ~91.7%; matching down to ~16.8% remaining
                                          (level 8) only with k ~ 2000
    vgg16     NOT pruned    1000  20      dense ~93.7%; matching down to ~1.5% remaining

Rewinding to k = 0 (``--set rewind="'init'"``) fails to match.
"""

import ml_collections

from experiments.configs import base

EPOCH = 351  # iterations per epoch: 45,000 / 128
# model: (rewind iteration k, levels, extra prunable rules)
TABLE = {"resnet20": (2000, 12, ()), "vgg16": (1000, 20, (("head", False),))}
VARIANTS = tuple(TABLE)


def get_config(arg: str = "resnet20") -> ml_collections.ConfigDict:
    k, levels, prunable = base.variant(TABLE, arg)
    return base.lottery(
        f"frankle2020_{arg}", dataset="cifar10", **base.model(arg), augment=True,
        optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4, batch_size=128,
        num_steps=160 * EPOCH, lr_milestones=(80 * EPOCH, 120 * EPOCH), lr_gamma=0.1,
        eval_every=EPOCH, checkpoint_every=10 * EPOCH, replicates=3, levels=levels,
        scope="global", rate=0.2, prunable=prunable, rewind="iteration", rewind_step=k,
        branches=("reinit", "random_prune"))
