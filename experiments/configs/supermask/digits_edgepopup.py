"""python -m experiments.supermask --config experiments/configs/supermask/digits_edgepopup.py

Edge-popup, offline: LeNet-300-100 (64-300-100-10) on scikit-learn's 8x8 digits, weights
frozen at the signed Kaiming constant +-sqrt(2 / fan_in), biases frozen at zero, scores Kaiming
uniform, top-k of |score| per layer with k = 0.5 = fraction KEPT; SGD lr 0.1 cosine, momentum
0.9, weight decay 1e-4 on the scores, batch 128, 600 iterations (~64 epochs). No weight is
trained. Should reach (measured, seed 0): test accuracy 0.973 at density 0.5 (chance 0.10;
trained dense 0.983). ~20 s of training on 2 CPU cores.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.supermask("digits_edgepopup", method="edge_popup", dataset="digits",
                          **base.model("lenet300"), weights="signed_kaiming_constant",
                          score_init="kaiming_uniform", density=0.5, optimizer="sgd",
                          learning_rate=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine",
                          batch_size=128, num_steps=600, eval_every=50)
