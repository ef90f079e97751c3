"""python -m experiments.lottery \\
    --config experiments/configs/lottery/frankle2019_cifar10.py:conv4 --data-dir DIR

Frankle & Carbin 2019 (ICLR), Conv-2 / Conv-4 / Conv-6 on CIFAR-10 (``:conv2``, ``:conv4``,
``:conv6``; 45k / 5k / 10k; DIR holds the python pickles or a prepared tfds directory): 3x3
same-padding conv blocks 64,64,pool[,128,128,pool[,256,256,pool]], FC 256-256-10,
Glorot-normal, no batch norm; Adam, batch 60, evaluated every 100 iterations; per level 20% of
each FC layer's and 10% of the output layer's remaining weights and, of each conv layer's,
the rate in the table below; rewind to initialisation, 20 levels, 5 replicates, random
re-initialisation and random pruning controls.

    model   learning rate  iterations per level  conv rate   should reach (paper, approx.)
    conv2   2e-4           20K                   10%         early stop 3.5x sooner, +3.4 pt
    conv4   3e-4           25K                   10%         early stop 3.5x sooner, +3.5 pt
    conv6   3e-4           30K                   15%         early stop 2.5x sooner, +3.3 pt

and every model above its dense test accuracy down to ~2% of the weights remaining.
"""

import ml_collections

from experiments.configs import base

# model: (learning rate, iterations per level, conv rate per level) [code]
TABLE = {"conv2": (2e-4, 20_000, 0.1), "conv4": (3e-4, 25_000, 0.1),
         "conv6": (3e-4, 30_000, 0.15)}
VARIANTS = tuple(TABLE)


def get_config(arg: str = "conv4") -> ml_collections.ConfigDict:
    lr, steps, conv_rate = base.variant(TABLE, arg)
    return base.lottery(
        f"frankle2019_{arg}", dataset="cifar10", **base.model(arg), optimizer="adam",
        learning_rate=lr, batch_size=60, num_steps=steps, eval_every=100,
        checkpoint_every=2_000, replicates=5, levels=20, scope="layerwise",
        rates=(("head", 0.1), ("conv", conv_rate), ("fc", 0.2)), rewind="init",
        branches=("reinit", "random_prune"))
