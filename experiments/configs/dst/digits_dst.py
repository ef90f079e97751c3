"""python -m experiments.dst --config experiments/configs/dst/digits_dst.py

Pruning during training, offline, at the size of the lottery demo: LeNet-300-100
(64-300-100-10) on scikit-learn's 1,797 8x8 digits (1,197 / 300 / 300), Adam 1.2e-3, batch
60, 1,000 iterations for every method, 3 replicates: dense, static random ERK, SET, RigL and
gradual magnitude pruning at 90% and 98% sparsity, with the MNIST recipes' schedules (the
dst defaults of experiments/configs/base.py: every 100 iterations until 75% of training, drop
30% cosine-annealed, ERK; GMP from 10% to 60% of training every 100). The test set has 300
images (one image = 0.33 points). Measured (seed 0; final test accuracy, mean ± sample std
over the 3 replicates): dense 97.78 ± 0.38; at 90% every method within a point of dense
(static 97.33 ± 0.58, SET 97.44 ± 0.19, RigL 97.00 ± 0.67, GMP 97.78 ± 0.38); at 98% they
separate: static 84.56 ± 3.02, SET 93.00 ± 0.88, RigL 95.11 ± 0.51, GMP 91.44 ± 4.19. 70 s
of CPU time (2.5 min wall on 2 shared cores).
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.dst("digits_dst", dataset="digits", **base.model("lenet300", hidden=(300, 100)),
                    optimizer="adam", learning_rate=1.2e-3, batch_size=60, num_steps=1000,
                    eval_every=50, checkpoint_every=250, replicates=3,
                    methods=("dense", "static", "set", "rigl", "gmp"), sparsities=(0.9, 0.98))
