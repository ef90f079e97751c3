"""python -m experiments.relearn --config experiments/configs/relearn/zhou2022_ke_digits.py

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

from experiments.configs import base

# path regex -> the axes whose first ke_fraction of units is the fit hypothesis
AXES = (("fc0", (-1,)), ("head/kernel", (-2,)), ("head/bias", ()), (".*", (-2, -1)))


def get_config() -> ml_collections.ConfigDict:
    return base.relearn("zhou2022_ke_digits", dataset="digits", label_noise=0.2,
                        **base.model("lenet300", hidden=(300, 100)), optimizer="adam",
                        learning_rate=1.2e-3, batch_size=60, generations=11,
                        steps_per_generation=500, eval_every=100, method="ke",
                        ke_fraction=0.8, ke_mode="channels", ke_axes=AXES)
