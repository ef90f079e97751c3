"""python -m experiments.dst --config experiments/configs/dst/mocanu2018_set_lenet300.py \\
    --data-dir DIR

Mocanu et al. 2018 (Nature Communications), sparse evolutionary training (SET) on
LeNet-300-100 / MNIST (DIR: the IDX files or a prepared tfds directory; or --data-file
mnist_subset_6k.npz): dense vs static random sparsity vs SET at 90% and 98% sparsity, 3
replicates, 50K iterations each of Frankle & Carbin 2019's LeNet training (Adam 1.2e-3, batch
60). SET's schedule as the RigL code runs it (REFERENCE.md): every 100 iterations until 75% of
training (our choice for LeNet), drop 30% of each layer's active weights with the smallest
|w| (cosine-annealed to 0), regrow as many uniformly at random, ERK densities. (The original
paper removes a fraction zeta = 0.3 every epoch with an Erdos-Renyi init; approximate, check
the paper: `--set drop_schedule=constant update_every=917` is that form at 55k examples /
batch 60.) Should reach: SET above static at equal sparsity.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.dst(
        "mocanu2018_set_lenet300", methods=("dense", "static", "set"), dataset="mnist",
        **base.model("lenet300", hidden=(300, 100)), optimizer="adam", learning_rate=1.2e-3,
        batch_size=60, num_steps=50_000, replicates=3, sparsities=(0.9, 0.98),
        distribution="erk", drop_fraction=0.3, drop_schedule="cosine", update_every=100,
        update_end=0.75, eval_every=500, checkpoint_every=5_000)
