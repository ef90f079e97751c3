"""python -m experiments.train --config experiments/configs/train/lenet300_digits.py

Dense LeNet-300-100 on scikit-learn's 8x8 digits (offline; 1,197 / 300 / 300 split), Adam
1.2e-3, batch 60, 2,000 iterations (~100 epochs), evaluated every 100 iterations. Should
reach >= 95% test accuracy (typically ~97-98%) in well under a minute on 2 CPU cores.

The same recipe on real MNIST (Frankle & Carbin 2019's LeNet-300-100 setting, 55k/5k/10k):

    python -m experiments.train --config experiments/configs/train/lenet300_digits.py \\
        --dataset mnist --data-dir DIR --set num_steps=50000

(DIR holds the four IDX files or a prepared tfds directory; expect ~98% test accuracy.)
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.train("lenet300_digits", dataset="digits",
                      **base.model("lenet300", hidden=(300, 100)), optimizer="adam",
                      learning_rate=1.2e-3, batch_size=60, num_steps=2000, eval_every=100,
                      checkpoint_every=500)
