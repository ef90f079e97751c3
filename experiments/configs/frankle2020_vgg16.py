"""python -m experiments.lottery --config experiments/configs/frankle2020_vgg16.py --data-dir DIR

Frankle, Dziugaite, Roy & Carbin 2020 (ICML), VGG-16 with batch norm on CIFAR-10 (45k / 5k /
10k, flip + 4-pixel crop): the ResNet-20 training recipe (SGD momentum 0.9, lr 0.1, batch 128,
160 epochs, lr x0.1 at epochs 80 and 120, weight decay 1e-4); global magnitude pruning of 20%
of the remaining weights per level, output layer NOT pruned, rewind to iteration k = 1000,
20 levels, 3 replicates, random re-initialisation and random pruning controls. Should reach
(paper, approximate): dense ~93.7%; matching the dense accuracy down to ~1.5% remaining with
k ~ 1000.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from frankle2020_resnet20 import get_config as resnet20_config  # noqa: E402


def get_config():
    c = resnet20_config()
    c.name = "frankle2020_vgg16"
    c.model = "vgg16"
    c.prunable = (("head", False),)
    c.rewind_step = 1000
    c.levels = 20
    return c
