"""python -m experiments.supermask --config experiments/configs/supermask/digits_supermask.py

Learned (Bernoulli) supermask, offline: LeNet-300-100 (64-300-100-10) on scikit-learn's 1,797
8x8 digits (1,197 / 300 / 300), weights frozen at the signed constant sign(w) * std(layer) of
their Glorot init, a logit per weight (uniform [-1, 1] init), masks sampled in every forward
pass, dynamic weight rescaling; SGD lr 100, momentum 0.9 (Zhou et al.'s), batch 100, 600
iterations (~50 epochs). No weight is trained. Should reach (measured, seed 0): test accuracy
0.980 with sampled masks and 0.980 with the expected mask, mask density 0.505 (chance 0.10;
the trained dense net 0.983). ~20 s of training on 2 CPU cores.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.supermask("digits_supermask", method="learned", dataset="digits",
                          **base.model("lenet300"), weights="signed_constant", rescale=True,
                          optimizer="sgd", learning_rate=100.0, momentum=0.9, batch_size=100,
                          num_steps=600, eval_every=50)
