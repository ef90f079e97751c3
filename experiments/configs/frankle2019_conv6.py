"""python -m experiments.lottery --config experiments/configs/frankle2019_conv6.py --data-dir DIR

Frankle & Carbin 2019 (ICLR), Conv-6 on CIFAR-10 (45k / 5k / 10k; DIR holds the python pickles
or a prepared tfds directory): 3x3 same-padding conv blocks, FC 256-256-10, Glorot-normal, no
batch norm; Adam 3e-4, batch 60, 30K iterations per level, evaluated every 100; per level 15%
of each conv layer's, 20% of each FC layer's and 10% of the output layer's remaining weights,
rewind to initialisation, 20 levels, 5 replicates, random re-initialisation and random pruning
controls. Should reach (paper, approximate): early stop up to 2.5x sooner, test accuracy up to
+3.3 pt over dense, above the dense accuracy down to ~2% remaining.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _frankle2019_conv import conv_config  # noqa: E402


def get_config():
    return conv_config("conv6")
