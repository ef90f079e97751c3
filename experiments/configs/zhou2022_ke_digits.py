"""python -m experiments.relearn --config experiments/configs/zhou2022_ke_digits.py

Knowledge evolution (KE; Taha et al. 2021, CVPR; as a forget-and-relearn method in Zhou et al.
2022, ICLR) on scikit-learn's 8x8 digits (offline; 1,197 / 300 / 300) with 20% of the
training labels replaced by a different random class. LeNet-300-100 (64-300-100-10), Adam
1.2e-3, batch 60 (this toolkit's LeNet recipe); 11 generations of 500 iterations. The fit
hypothesis is a slim dense sub-network: the first 80% of every hidden layer's units (fc0 keeps
all inputs, the classifier all classes); the rest is re-initialised every generation and
everything retrained with a fresh optimizer. Control: 5,500 plain iterations as one continued
run, read at the same boundaries.

The paper's claim ([abstract], Zhou et al.): forgetting hits mislabeled examples harder than
clean ones. Measured here: see docs/lca.md (no tuning to the claim). ~1 minute on 2 cores.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "zhou2022_ke_digits"
    c.dataset = "digits"
    c.model = "lenet300"
    c.model_kwargs = ml_collections.ConfigDict({"hidden": (300, 100)})
    c.optimizer = "adam"
    c.learning_rate = 1.2e-3
    c.momentum = 0.0
    c.batch_size = 60
    c.steps_per_generation = 500
    c.generations = 11
    c.eval_every = 100
    c.label_noise = 0.2
    c.method = "ke"
    c.ke_fraction = 0.8
    c.ke_mode = "channels"
    c.ke_axes = (("fc0", (-1,)), ("head/kernel", (-2,)), ("head/bias", ()), (".*", (-2, -1)))
    c.seed = 0
    return c
