"""python -m experiments.supermask \\
    --config experiments/configs/supermask/ramanujan2020_cifar10.py:conv4 \\
    --data-dir DIR

Ramanujan et al. 2020 (CVPR), edge-popup on Conv-4 or Conv-6 (``:conv4``, ``:conv6``) /
CIFAR-10 (45k / 5k / 10k; DIR: the python pickles or a prepared tfds directory): weights frozen
at the signed Kaiming constant +-sqrt(2 / fan_in), no biases (frozen at zero), scores Kaiming
uniform, top-k of |score| per layer with k = density = 0.5 = fraction KEPT (their
--prune-rate); SGD lr 0.1 cosine, momentum 0.9, weight decay 1e-4 on the scores, batch 128,
100 epochs (35,200 iterations). Should reach (paper, approximate): about the accuracy of the
trained dense network (~70-80%) with no weight trained; best k between 30% and 70% kept (sweep
with --set density=0.3 etc.).
"""

import ml_collections

from experiments.configs import base

VARIANTS = ("conv4", "conv6")


def get_config(arg: str = "conv4") -> ml_collections.ConfigDict:
    base.variant(dict.fromkeys(VARIANTS), arg)
    return base.supermask(f"ramanujan2020_{arg}", method="edge_popup", dataset="cifar10",
                          **base.model(arg), weights="signed_kaiming_constant",
                          score_init="kaiming_uniform", density=0.5, optimizer="sgd",
                          learning_rate=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                          batch_size=128, num_steps=35_200, eval_every=1000)
