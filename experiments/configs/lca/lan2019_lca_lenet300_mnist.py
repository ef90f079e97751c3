"""python -m experiments.lca --config experiments/configs/lca/lan2019_lca_lenet300_mnist.py \\
    --data-file F

Loss Change Allocation (Lan et al. 2019, NeurIPS) of LeNet-300-100 (784-300-100-10, ReLU,
Glorot normal) on MNIST. F is an ``.npz`` of ``images`` / ``labels``: with the 6,000-digit
MNIST subset a stratified 5,000 / 1,000 train / test split (a subset, NOT the official split).
The LCA evaluation set is the whole training set (as in the paper), every iteration allocated
with Simpson's rule (gradients at the start, midpoint and end of each step). The optimiser
(Adam 1.2e-3, batch 60) is this toolkit's LeNet recipe (Frankle & Carbin 2019), NOT taken
from Lan et al.; 1,000 iterations (12 epochs of the subset).

Should reach (the paper, [abstract]): barely over 50% of the parameters help (LCA < 0) in any
given iteration; some layers hurt overall (positive total LCA). Σ LCA equals the loss change up
to Simpson's error. Measured here (docs/lca.md): test 96.7%, 51.5% of the parameters help per
iteration, no layer hurts, relative telescoping error 0.11%. ~1 minute on 2 quiet CPU cores,
~5 busy (two gradients of the 5,000-example set per iteration dominate).
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.lca("lan2019_lca_lenet300_mnist", dataset="mnist", test_size=1000,
                    val_size=0, image_shape=(28, 28), first_layer="fc0/kernel",
                    **base.model("lenet300", hidden=(300, 100)), optimizer="adam",
                    learning_rate=1.2e-3, batch_size=60, num_steps=1000, eval_every=100)
