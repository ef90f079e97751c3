"""python -m experiments.dst --config experiments/configs/dst/evci2020_rigl_lenet300.py \\
    --data-dir DIR

Evci et al. 2020 (ICML), "Rigging the Lottery", on LeNet-300-100 / MNIST (DIR: the IDX files or
a prepared tfds directory; or --data-file mnist_subset_6k.npz): RigL against the baselines of
the paper's comparison — dense, static (random ERK masks), SET, and gradual magnitude pruning —
at 90% and 98% sparsity, 3 replicates, the same 50K-iteration budget for every method
(training: Frankle & Carbin 2019's LeNet recipe, Adam 1.2e-3, batch 60, Glorot-normal, biases
not pruned). Schedules (REFERENCE.md): every 100 iterations until T_end, drop 30% of each
layer's active weights (cosine-annealed to 0), regrow by the largest dense gradient; ERK
per-layer densities; GMP (Zhu & Gupta's cubic schedule, uniform per layer) every 100
iterations. Not given for LeNet by the papers, our choice: T_end = 75% of training (the RigL
paper's ImageNet setting, approximate), GMP from 10% to 60% of training. Should reach (paper,
ImageNet / CIFAR; not measured for LeNet by the paper): RigL >= SET >= static at equal
sparsity, GMP close to dense at 90%. Measured on the 6,000-digit MNIST subset with 3,000
iterations: docs/sweeps.md ("Pruning during training").
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.dst(
        "evci2020_rigl_lenet300", methods=("dense", "static", "set", "rigl", "gmp"),
        dataset="mnist", **base.model("lenet300", hidden=(300, 100)), optimizer="adam",
        learning_rate=1.2e-3, batch_size=60, num_steps=50_000, eval_every=500,
        checkpoint_every=5_000, replicates=3, sparsities=(0.9, 0.98), distribution="erk",
        update_every=100, drop_fraction=0.3, drop_schedule="cosine", update_end=0.75,
        gmp_begin=0.1, gmp_end=0.6, gmp_frequency=100)
