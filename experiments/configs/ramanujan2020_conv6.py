"""python -m experiments.supermask --config experiments/configs/ramanujan2020_conv6.py \\
    --data-dir DIR

Ramanujan et al. 2020 (CVPR), edge-popup on Conv-6 / CIFAR-10 (45k / 5k / 10k; DIR: the python
pickles or a prepared tfds directory): weights frozen at the signed Kaiming constant
+-sqrt(2 / fan_in), no biases (frozen at zero), scores Kaiming uniform, top-k of |score| per
layer with k = density = 0.5 = fraction KEPT (their --prune-rate); SGD lr 0.1 cosine, momentum
0.9, weight decay 1e-4 on the scores, batch 128, 100 epochs (35,200 iterations). Should reach
(paper, approximate): about the accuracy of the trained dense Conv-6 (~70-80%) with no weight
trained; best k between 30% and 70% kept (sweep with --set density=0.3 etc.).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _supermask import base  # noqa: E402


def get_config():
    return base("ramanujan2020_conv6", "edge_popup", dataset="cifar10", model="conv6",
                weights="signed_kaiming_constant", score_init="kaiming_uniform", density=0.5,
                learning_rate=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                batch_size=128, num_steps=35_200, eval_every=1000)
