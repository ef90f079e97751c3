"""python -m experiments.dst --config experiments/configs/zhu2017_gmp_lenet300.py --data-dir DIR

Zhu & Gupta 2017, "To prune, or not to prune", gradual magnitude pruning of LeNet-300-100 on
MNIST (DIR: the IDX files or a prepared tfds directory; or --data-file mnist_subset_6k.npz):
dense vs GMP to 90% and 98% sparsity, 3 replicates, 50K iterations each. The cubic schedule
s_t = s_f (1 - (1 - (t - t0) / (n dt))^3) from s_i = 0 (REFERENCE.md), every dt = 100
iterations from 10% to 60% of training (our choice: the paper gives no LeNet schedule), each
layer keeping its top (1 - s_t) by |w|; pruned weights stay exactly 0. Should reach (paper, on
larger models): within a fraction of a point of dense at moderate sparsity (90% here), a visible
drop at 98%.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _dst_lenet300 import dst_config  # noqa: E402


def get_config():
    return dst_config("zhu2017_gmp_lenet300", ("dense", "gmp"))
