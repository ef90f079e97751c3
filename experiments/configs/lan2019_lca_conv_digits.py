"""python -m experiments.lca --config experiments/configs/lan2019_lca_conv_digits.py

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


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "lan2019_lca_conv_digits"
    c.dataset = "digits"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data_file = ml_collections.FieldReference(None, field_type=str)
    c.train_size = 0
    c.test_size = 0
    c.model = "conv2"
    c.model_kwargs = ml_collections.ConfigDict({"width": 16, "fc": (64, 64)})
    c.optimizer = "adam"
    c.learning_rate = 1e-3
    c.momentum = 0.0
    c.batch_size = 60
    c.num_steps = 600
    c.eval_every = 20
    c.seed = 0
    c.lca_eval_size = ml_collections.FieldReference(None, field_type=int)
    c.lca_eval_batch_size = ml_collections.FieldReference(None, field_type=int)
    c.substeps = 1
    c.unroll = 20
    c.first_layer = "conv0/kernel"
    c.image_shape = ()
    return c
