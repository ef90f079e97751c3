"""python -m experiments.dst --config experiments/configs/mocanu2018_set_lenet300.py --data-dir DIR

Mocanu et al. 2018 (Nature Communications), sparse evolutionary training (SET) on
LeNet-300-100 / MNIST (DIR: the IDX files or a prepared tfds directory; or --data-file
mnist_subset_6k.npz): dense vs static random sparsity vs SET at 90% and 98% sparsity, 3
replicates, 50K iterations each. SET's schedule as the RigL code runs it (REFERENCE.md): every
100 iterations until 75% of training, drop 30% of each layer's active weights with the smallest
|w| (cosine-annealed to 0), regrow as many uniformly at random, ERK densities. (The original
paper removes a fraction zeta = 0.3 every epoch with an Erdos-Renyi init; approximate, check
the paper: `--set drop_schedule=constant update_every=917` is that form at 55k examples /
batch 60.) Should reach: SET above static at equal sparsity.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _dst_lenet300 import dst_config  # noqa: E402


def get_config():
    return dst_config("mocanu2018_set_lenet300", ("dense", "static", "set"))
