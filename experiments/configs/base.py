"""Building blocks of the configs: one builder per driver, the keys it reads, neutral defaults.

A config file under ``experiments/configs/<driver>/`` returns ``base.<driver>(name, ...)``:
a ``ConfigDict`` with ``driver`` (the driver that runs it), ``name`` and every key that driver
reads. Keys marked :data:`REQUIRED` have no neutral value (optimiser, learning rate, batch,
iterations, the pruning plan ...): the config must state them, so a paper recipe carries its
paper's hyperparameters itself. The others default to a no-op or to the toolkit's default
(said per key below); a key the driver does not know is an error naming it. Nothing here is
a recipe: recipes and demos never read each other (DESIGN.md, "Paper recipes").

>>> c = lottery("demo", dataset="digits", **model("lenet300", hidden=(32,)), optimizer="adam",
...             learning_rate=1e-3, batch_size=60, num_steps=100, eval_every=50,
...             checkpoint_every=50, replicates=1, levels=2, scope="layerwise")
>>> c.driver, c.model_kwargs.hidden, c.branches, c.data_dir is None
('lottery', (32,), (), True)
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import ml_collections


class _Marker:
    def __init__(self, text: str, field_type: type | None = None):
        self.text, self.field_type = text, field_type

    def __repr__(self) -> str:
        return self.text


REQUIRED = _Marker("REQUIRED")  # the config must give it
ABSENT = _Marker("ABSENT")  # the key exists only when the config gives it


def unset(field_type: type) -> _Marker:
    """A key that is ``None`` until a flag or ``--set`` gives it a ``field_type`` value."""
    return _Marker(f"unset({field_type.__name__})", field_type)


def model(name: str, **kwargs: Any) -> dict[str, Any]:
    """``model`` and ``model_kwargs`` of experiments.common.build_model, to splat (``**``)."""
    return {"model": name, "model_kwargs": kwargs}


DATA_FILES = {"data_dir": unset(str), "data_file": unset(str)}
# The training keys of experiments.common.build_tx; a step decay only with lr_milestones.
TRAINING = {
    "model": REQUIRED, "model_kwargs": {}, "optimizer": REQUIRED, "learning_rate": REQUIRED,
    "momentum": 0.0, "weight_decay": 0.0, "lr_milestones": (), "lr_gamma": 0.1,
    "batch_size": REQUIRED, "num_steps": REQUIRED, "eval_every": REQUIRED, "seed": 0,
}
CHECKPOINTS = {"checkpoint_every": REQUIRED, "keep_checkpoints": 2}

FIELDS: dict[str, dict[str, Any]] = {
    "lottery": {
        "dataset": REQUIRED, **DATA_FILES, **TRAINING, **CHECKPOINTS, "augment": False,
        "replicates": REQUIRED, "levels": REQUIRED, "scope": REQUIRED,  # layerwise | global
        "rates": (),  # layerwise: ((path regex, fraction of the remaining removed), ...)
        "rate": 0.2,  # global: fraction of the remaining removed per level
        "criterion": "magnitude", "rewind": "init", "rewind_step": 0,
        "prunable": (),  # extra (regex, bool) rules; default: kernels prunable, biases not
        "branches": (), "branch_levels": (), "export": True,
    },
    # Schedule defaults: the RigL code's (REFERENCE.md); GMP every layer alike (Zhu & Gupta).
    "dst": {
        "dataset": REQUIRED, **DATA_FILES, **TRAINING, **CHECKPOINTS,
        "replicates": REQUIRED, "methods": REQUIRED,
        "sparsities": REQUIRED,  # fraction of the prunable weights pruned
        "distribution": "erk",  # static / SET / RigL masks at init: erk | uniform
        "drop_fraction": 0.3,  # SET / RigL: d0, fraction of a layer's active weights dropped
        "drop_schedule": "cosine",  # d(t) from d0 to 0 at update_end: cosine | constant
        "update_every": 100,  # dT
        "update_end": 0.75,  # T_end, fraction of num_steps
        "gmp_begin": 0.1, "gmp_end": 0.6,  # t0 and t0 + n dt, fractions of num_steps
        "gmp_frequency": 100, "gmp_distribution": "uniform",  # dt; per layer
    },
    "supermask": {
        "method": REQUIRED,  # learned | edge_popup | at_init
        "dataset": REQUIRED, **DATA_FILES, "model": REQUIRED, "model_kwargs": {}, "seed": 0,
        "weights": "init",  # init | signed_constant | signed_kaiming_constant | kaiming_normal
        "score_init": "uniform", "score_scale": 1.0,  # uniform | kaiming_uniform | constant
        "rescale": False,  # Zhou et al.'s dynamic weight rescaling by total / kept
        "density": 0.5,  # edge_popup: fraction of each layer's weights KEPT (the paper's k)
        "train_other": False,  # also train biases / norm params (the papers: no)
        "optimizer": REQUIRED, "learning_rate": REQUIRED, "momentum": 0.0, "weight_decay": 0.0,
        "schedule": "constant",  # constant | cosine
        "batch_size": REQUIRED, "num_steps": REQUIRED, "eval_every": REQUIRED,
        # at_init: criterion x density x {init weights, signed constant}
        "criteria": ("large_final_same_sign", "large_final", "magnitude_increase", "random"),
        "densities": (0.05, 0.1, 0.2, 0.3, 0.5), "signed_constant": (False, True),
        "scope": "layerwise",
    },
    "nm": {
        "dataset": REQUIRED, "data_dir": unset(str), "val_size": unset(int), **TRAINING,
        "augment": False, "n": REQUIRED, "m": REQUIRED, "lambda_w": REQUIRED,
        "prunable": (), "methods": REQUIRED,
    },
    "train": {
        "dataset": REQUIRED, "data_dir": unset(str),
        "val_size": unset(int),  # None: the dataset's standard split
        **TRAINING, **CHECKPOINTS, "augment": False,
        "random_sparsity": 0.0,  # fraction pruned at init (layerwise, random); 0 = dense
    },
    "sweep": {  # learning_rate, sparsity and seed are the grid's axes (lists)
        "dataset": REQUIRED, "model": REQUIRED, "hidden": REQUIRED, "learning_rate": REQUIRED,
        "sparsity": REQUIRED, "seed": REQUIRED, "batch_size": REQUIRED, "num_steps": REQUIRED,
        "eval_every": REQUIRED, "backend": "sharding",  # or "pmap", "vmap"
    },
    "forgetting": {
        "dataset": REQUIRED, "data_file": unset(str),
        "test_size": 1000,  # data_file only: stratified held-out examples
        "merge_val": "test",  # nothing early-stops: the val split joins "test" (or "train")
        "model": REQUIRED, "model_kwargs": {}, "optimizer": REQUIRED, "learning_rate": REQUIRED,
        "batch_size": REQUIRED, "num_steps": REQUIRED, "eval_every": REQUIRED,
        "checkpoint_every": REQUIRED,
        "members": REQUIRED, "sparsities": REQUIRED,
        # gradual magnitude pruning during training (jaxsparse.pruners.gmp)
        "prune_begin": REQUIRED, "prune_end": REQUIRED, "prune_frequency": REQUIRED,
        "prune_allocation": "uniform",  # every layer to the level's sparsity (Zhu & Gupta)
        "label_noise": 0.0,  # fraction of a fixed training subset relabelled (off)
        # VoG checkpoints every snapshot_every (step 0 excluded); EL2N / GraNd at score_step
        "snapshot_every": REQUIRED, "score_step": REQUIRED, "vog_target": "logit",
        # analyses
        "tie": "prob", "null_draws": 1000, "ci": 0.95, "alpha": 0.05, "cie_fraction": 0.1,
        "int8": True,  # the dense population fake-quantised to int8 as a compression variant
        "record_values": "logits", "record_layout": "list",  # or "probs", "none"; "columns"
        "seed": 0,
    },
    "lca": {
        "dataset": REQUIRED, **DATA_FILES, "test_size": unset(int), "val_size": unset(int),
        "model": REQUIRED, "model_kwargs": {}, "optimizer": REQUIRED, "learning_rate": REQUIRED,
        "momentum": 0.0, "batch_size": REQUIRED, "num_steps": REQUIRED, "eval_every": REQUIRED,
        "seed": 0,
        "lca_eval_size": unset(int),  # None: the whole training set (as in the paper)
        "lca_eval_batch_size": unset(int), "substeps": 1, "unroll": 1,
        "first_layer": REQUIRED, "image_shape": (),
    },
    "relearn": {
        "dataset": REQUIRED, "model": REQUIRED, "model_kwargs": {}, "optimizer": REQUIRED,
        "learning_rate": REQUIRED, "momentum": 0.0, "batch_size": REQUIRED,
        "steps_per_generation": REQUIRED, "generations": REQUIRED, "eval_every": REQUIRED,
        "label_noise": 0.0, "method": REQUIRED,  # llf | ke
        "llf_from": ABSENT,  # llf: the first re-initialised layer
        "ke_fraction": ABSENT, "ke_mode": ABSENT, "ke_axes": ABSENT,  # ke: the fit hypothesis
        "seed": 0,
    },
    "oneshot": {
        "seed": 0, "d_model": REQUIRED, "num_layers": REQUIRED, "num_heads": REQUIRED,
        "d_ff": REQUIRED, "seq_len": REQUIRED, "train_windows": REQUIRED,
        "num_steps": REQUIRED, "batch_size": REQUIRED, "learning_rate": REQUIRED,
        "warmup_steps": REQUIRED, "weight_decay": REQUIRED, "eval_every": REQUIRED,
        "val_windows": REQUIRED, "calib_sequences": REQUIRED, "calib_batch": REQUIRED,
        "methods": REQUIRED, "settings": REQUIRED,  # unstructured sparsity "0.5", or "n:m"
        "blocksize": REQUIRED, "percdamp": REQUIRED, "owl_sparsity": REQUIRED,
        "owl_m": REQUIRED, "owl_lam": REQUIRED, "owl_methods": REQUIRED, "sweep": REQUIRED,
    },
}


def _value(v: Any) -> Any:
    if isinstance(v, _Marker):
        return ml_collections.FieldReference(None, field_type=v.field_type)
    if isinstance(v, Mapping):
        return ml_collections.ConfigDict(dict(v))
    return v


def build(driver: str, name: str, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config of ``driver`` named ``name``: :data:`FIELDS`'s defaults, then ``values``.

    Raises:
      KeyError: ``driver`` is unknown, a key of ``values`` is not one of the driver's (with
        the closest ones), or a :data:`REQUIRED` key is missing.
    """
    if driver not in FIELDS:
        raise KeyError(f"unknown driver {driver!r}; known: {sorted(FIELDS)}")
    fields = FIELDS[driver]
    unknown = [k for k in values if k not in fields]
    if unknown:
        near = {k: difflib.get_close_matches(k, list(fields), n=2) for k in unknown}
        raise KeyError(f"{name}: {driver} configs have no key(s) {near} (key: closest)")
    missing = [k for k, v in fields.items() if v is REQUIRED and k not in values]
    if missing:
        raise KeyError(f"{name}: {driver} configs must give {missing}")
    c = ml_collections.ConfigDict()
    c.driver = driver
    c.name = name
    for key, default in fields.items():
        value = values.get(key, default)
        if value is not ABSENT:
            c[key] = _value(value)
    return c


def variant(table: Mapping[str, Any], arg: str) -> Any:
    """``table[arg]``: the row of a config file's variant ``arg`` (``file.py:arg``).

    Raises:
      ValueError: ``arg`` is not a variant (names the known ones).
    """
    if arg not in table:
        raise ValueError(f"unknown variant {arg!r}: expected one of {tuple(table)}")
    return table[arg]


# One builder per driver: ``lottery(name, **values)`` is ``build("lottery", name, values)``.
def _builder(driver: str):
    def builder(name: str, **values: Any) -> ml_collections.ConfigDict:
        return build(driver, name, values)

    builder.__name__ = builder.__qualname__ = driver
    builder.__doc__ = f"A config of ``python -m experiments.{driver}`` (keys: FIELDS[{driver!r}])."
    return builder


lottery, dst, supermask, nm, train = map(_builder, ("lottery", "dst", "supermask", "nm", "train"))
sweep, forgetting, lca, relearn, oneshot = map(
    _builder, ("sweep", "forgetting", "lca", "relearn", "oneshot"))
