"""python -m experiments.supermask \\
    --config experiments/configs/supermask/zhou2019_supermask_fc.py \\
    --data-dir DIR

Zhou et al. 2019 (NeurIPS), learned supermask on LeNet-300-100 / MNIST (DIR: raw MNIST files or
a prepared tfds directory; or --data-file /path/mnist_subset_6k.npz for the 6k subset): weights
frozen at the signed constant sign(w) * std(layer) of the Glorot-normal init, a Bernoulli logit
per weight, masks sampled in training and evaluation, dynamic weight rescaling; SGD lr 100,
momentum 0.9 [code], batch 60 and 50K iterations (the lottery recipe's; our choice). Biases
frozen at zero. Should reach (paper, approximate): ~95-98% test accuracy with no weight trained
(use --set weights='"init"' / rescale=False for the paper's other variants).
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.supermask("zhou2019_supermask_fc", method="learned", dataset="mnist",
                          **base.model("lenet300"), weights="signed_constant", rescale=True,
                          optimizer="sgd", learning_rate=100.0, momentum=0.9, batch_size=60,
                          num_steps=50_000, eval_every=1000)
