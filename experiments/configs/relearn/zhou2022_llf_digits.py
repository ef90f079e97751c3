"""python -m experiments.relearn --config experiments/configs/relearn/zhou2022_llf_digits.py

Later-layer forgetting (LLF; Zhou et al. 2022, ICLR, "Fortuitous Forgetting in Connectionist
Networks") on scikit-learn's 8x8 digits (offline; 1,197 / 300 / 300) with 20% of the training
labels replaced by a different random class. LeNet-300-100 (64-300-100-10), Adam 1.2e-3,
batch 60 (this toolkit's LeNet recipe, not the paper's ResNet-18 setting); 11 generations of
500 iterations (~25 epochs each); every generation re-initialises ``fc1`` and ``head`` (the
analogue of ResNet-18's layer4 + fc) and retrains everything with a fresh optimizer. Control:
5,500 plain iterations as one continued run, read at the same boundaries.

The paper's claim ([abstract]): forgetting removes undesirable information — mislabeled
examples lose more of their (memorised) fit than clean ones, and relearning generalises
better. Measured here: see docs/lca.md (no tuning to the claim). ~1 minute on 2 busy cores.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.relearn("zhou2022_llf_digits", method="llf", llf_from="fc1", generations=11,
                        steps_per_generation=500, label_noise=0.2, dataset="digits",
                        **base.model("lenet300", hidden=(300, 100)), optimizer="adam",
                        learning_rate=1.2e-3, batch_size=60, eval_every=100)
