"""python -m experiments.lottery --config experiments/configs/lottery/frankle2019_lenet300.py \\
    --data-dir DIR

Frankle & Carbin 2019 (ICLR), LeNet-300-100 on MNIST (55k / 5k / 10k; DIR holds the IDX files
or a prepared tfds directory): Glorot-normal init, biases not pruned, Adam 1.2e-3, batch 60,
50K iterations per level, evaluated every 100; per level 20% of each hidden layer's and 10% of
the output layer's remaining weights (layerwise), rewind to initialisation, 24 levels (0.8^24 =
0.5% of the hidden weights), 5 replicates, random re-initialisation and random pruning controls.
Should reach (paper, approximate): dense ~98%; winning tickets at 10-20% remaining learn faster
and reach higher test accuracy; fastest early stop near 21% remaining, best accuracy near 13.5%
(+0.3 pt), back to the dense accuracy near 3.6%; random re-initialisation learns slower and
loses accuracy early.

On the 6,000-digit MNIST subset (a stratified 4,500 / 500 / 1,000 split of a subset, NOT the
official split) with fewer iterations, for a quick CPU check:

    python -m experiments.lottery --config experiments/configs/lottery/frankle2019_lenet300.py \\
        --data-file /path/to/mnist_subset_6k.npz --set num_steps=2000 --levels 6 --replicates 2
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.lottery(
        "frankle2019_lenet300", dataset="mnist", **base.model("lenet300", hidden=(300, 100)),
        optimizer="adam", learning_rate=1.2e-3, batch_size=60, num_steps=50_000,
        eval_every=100, checkpoint_every=5_000, replicates=5, levels=24, scope="layerwise",
        rates=(("head", 0.1), (".*", 0.2)), criterion="magnitude", rewind="init",
        branches=("reinit", "random_prune"))
