"""python -m experiments.lottery --config experiments/configs/frankle2020_resnet20.py --data-dir DIR

Frankle, Dziugaite, Roy & Carbin 2020 (ICML), ResNet-20 (16-32-64, batch norm) on CIFAR-10
(45k / 5k / 10k, flip + 4-pixel crop): SGD momentum 0.9, lr 0.1, batch 128, 160 epochs
(56,160 iterations at 351 per epoch), lr x0.1 at epochs 80 and 120, weight decay 1e-4; global
magnitude pruning of 20% of the remaining weights per level (output layer pruned too), rewind
to iteration k = 2000, 12 levels, 3 replicates, random re-initialisation and random pruning
controls. Should reach (paper, approximate): dense ~91.7%; matching the dense accuracy down to
~16.8% remaining (level 8) only with rewinding to k ~ 2000; rewinding to k = 0 (``--set
rewind="'init'"``) fails to match.
"""

import os

from experiments import common


def get_config():
    c = common.load_config(os.path.join(os.path.dirname(__file__), "digits_lenet.py"))
    c.name = "frankle2020_resnet20"
    c.dataset = "cifar10"
    c.model = "resnet20"
    c.model_kwargs = {}
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.batch_size = 128
    c.num_steps = 160 * 351
    c.lr_milestones = (80 * 351, 120 * 351)
    c.lr_gamma = 0.1
    c.eval_every = 351
    c.checkpoint_every = 351 * 10
    c.augment = True
    c.replicates = 3
    c.levels = 12
    c.scope = "global"
    c.rate = 0.2
    c.rates = ()  # layerwise only
    c.rewind = "iteration"
    c.rewind_step = 2000
    c.branches = ("reinit", "random_prune")
    return c
