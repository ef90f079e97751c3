"""python -m experiments.dst --config experiments/configs/dst/zhu2017_gmp_lenet300.py --data-dir DIR

Zhu & Gupta 2017, "To prune, or not to prune", gradual magnitude pruning of LeNet-300-100 on
MNIST (DIR: the IDX files or a prepared tfds directory; or --data-file mnist_subset_6k.npz):
dense vs GMP to 90% and 98% sparsity, 3 replicates, 50K iterations each (Frankle & Carbin
2019's LeNet training: Adam 1.2e-3, batch 60). The cubic schedule s_t = s_f (1 - (1 - (t -
t0) / (n dt))^3) from s_i = 0 (REFERENCE.md), every dt = 100 iterations from 10% to 60% of
training (our choice: the paper gives no LeNet schedule), each layer keeping its top (1 - s_t)
by |w|; pruned weights stay exactly 0. Should reach (paper, on larger models): within a
fraction of a point of dense at moderate sparsity (90% here), a visible drop at 98%.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.dst(
        "zhu2017_gmp_lenet300", methods=("dense", "gmp"), sparsities=(0.9, 0.98),
        gmp_begin=0.1, gmp_end=0.6, gmp_frequency=100, gmp_distribution="uniform",
        dataset="mnist", **base.model("lenet300", hidden=(300, 100)), optimizer="adam",
        learning_rate=1.2e-3, batch_size=60, num_steps=50_000, replicates=3, eval_every=500,
        checkpoint_every=5_000)
