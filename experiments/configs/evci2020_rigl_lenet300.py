"""python -m experiments.dst --config experiments/configs/evci2020_rigl_lenet300.py --data-dir DIR

Evci et al. 2020 (ICML), "Rigging the Lottery", on LeNet-300-100 / MNIST (DIR: the IDX files or
a prepared tfds directory; or --data-file mnist_subset_6k.npz): RigL against the baselines of
the paper's comparison — dense, static (random ERK masks), SET, and gradual magnitude pruning —
at 90% and 98% sparsity, 3 replicates, the same 50K-iteration budget for every method.
Schedules (REFERENCE.md; see _dst_lenet300.py): every 100 iterations until 75% of training,
drop 30% of each layer's active weights (cosine-annealed to 0), regrow by the largest dense
gradient; ERK per-layer densities. Should reach (paper, ImageNet / CIFAR; not measured for
LeNet by the paper): RigL >= SET >= static at equal sparsity, GMP close to dense at 90%.
Measured on the 6,000-digit MNIST subset with 3,000 iterations: docs/sweeps.md ("Pruning
during training").
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _dst_lenet300 import dst_config  # noqa: E402


def get_config():
    return dst_config("evci2020_rigl_lenet300", ("dense", "static", "set", "rigl", "gmp"))
