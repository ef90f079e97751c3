"""python -m experiments.lca --config experiments/configs/lca/lan2019_lca_conv_digits.py

Loss Change Allocation (Lan et al. 2019, NeurIPS) of a small conv net on scikit-learn's 8x8
digits (offline; 1,197 / 300 / 300): Conv-2 (two 3x3 convs of 16 channels, max-pool, FC
64-64-10, ReLU, Glorot normal), Adam 1e-3, batch 60, 600 iterations (~30 epochs), the whole
training set as the LCA evaluation set. The paper's conv results are on MNIST / CIFAR-10
(LeNet, ResNet-20); this is the offline stand-in, with this toolkit's choice of optimiser.

Should reach: ~95% test accuracy; per the paper, about half of the parameters help in each
iteration. ``unroll=20`` (= eval_every) unrolls the chunk: the XLA:CPU conv weight-gradient
inside a loop is ~30x slower (see jaxsparse.train.make_train_chunk). A few minutes on CPU.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.lca("lan2019_lca_conv_digits", dataset="digits",
                    **base.model("conv2", width=16, fc=(64, 64)), optimizer="adam",
                    learning_rate=1e-3, batch_size=60, num_steps=600, eval_every=20, unroll=20,
                    first_layer="conv0/kernel")
