"""Shared body of the frankle2019_conv{2,4,6} recipes (not a recipe itself)."""

import os

from experiments import common

# model: (learning rate, iterations, conv rate per level) from Frankle & Carbin 2019 [code].
SETTINGS = {"conv2": (2e-4, 20_000, 0.1), "conv4": (3e-4, 25_000, 0.1),
            "conv6": (3e-4, 30_000, 0.15)}


def conv_config(model: str):
    lr, steps, conv_rate = SETTINGS[model]
    c = common.load_config(os.path.join(os.path.dirname(__file__), "digits_lenet.py"))
    c.name = f"frankle2019_{model}"
    c.dataset = "cifar10"
    c.model = model
    c.model_kwargs = {}
    c.learning_rate = lr
    c.batch_size = 60
    c.num_steps = steps
    c.eval_every = 100
    c.checkpoint_every = 2_000
    c.replicates = 5
    c.levels = 20
    c.scope = "layerwise"
    c.rates = (("head", 0.1), ("conv", conv_rate), ("fc", 0.2))
    c.rewind = "init"
    c.branches = ("reinit", "random_prune")
    return c
