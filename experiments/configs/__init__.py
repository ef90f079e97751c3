"""Configs of the drivers: one folder per driver, shared building blocks in :mod:`.base`.

``experiments/configs/<driver>/<name>.py`` is run by ``python -m experiments.<driver>``
(``config.driver`` records it; the command line refuses a config made for another driver).
A paper recipe is named after its paper and states the paper's hyperparameters itself; it
never reads another config file. Shared blocks (the keys a driver needs, with neutral
defaults) come from ``from experiments.configs import base``.
"""
