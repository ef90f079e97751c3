"""python -m experiments.supermask \\
    --config experiments/configs/supermask/zhou2019_supermask_conv4.py \\
    --data-dir DIR

Zhou et al. 2019 (NeurIPS), learned supermask on Conv-4 / CIFAR-10 (45k / 5k / 10k; DIR: the
python pickles or a prepared tfds directory): Frankle & Carbin's Conv-4 (no batch norm,
Glorot-normal), weights frozen at the signed constant, a Bernoulli logit per weight, dynamic
weight rescaling; SGD lr 100, momentum 0.9 [code], batch 60 and 25K iterations (the Conv-4
lottery recipe's; our choice). Should reach (paper, approximate): well above the 41% of the
supermask-at-init, in the 60-70% range, with no weight trained.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.supermask("zhou2019_supermask_conv4", method="learned", rescale=True,
                          weights="signed_constant", dataset="cifar10", **base.model("conv4"),
                          optimizer="sgd", learning_rate=100.0, momentum=0.9, batch_size=60,
                          num_steps=25_000, eval_every=1000)
