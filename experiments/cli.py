"""The one command-line layer of every driver: flags, typed ``--set``, user errors, progress.

Every ``python -m experiments.<driver>`` has the same options (:func:`parser`):

    --config FILE[:ARG]    python file with get_config() (or get_config(ARG)); required
    --out DIR              parent of the run directories
    --set KEY=VALUE ...    config overrides, Python literals, dotted keys; repeatable, and
                           several per flag (`--set a=1 b=2 --set c=3` applies all three)
    --quiet                no progress bar, no per-run lines (alias: --no-progress)
    --cpu-devices auto|N   JAX CPU devices a population shards over (population drivers)
    --dataset NAME --data-dir DIR --data-file FILE.npz --train-file F --test-file F
                           the data (experiments.common.load_dataset)

and the same behaviour (:func:`main`): the config is loaded (one made for another driver —
its ``driver`` key; ``experiments/configs/<driver>/`` — is refused), the flags and every
``--set`` are applied with their types checked against the config's values, the driver's
``validate(config)`` runs — all before any JAX work or training — and a user error (a bad
key, value, file or combination: :data:`USER_ERRORS`) exits with status 2 and an
argparse-style ``prog: error: ...`` message that names the offending key / value / file,
never a traceback. A driver then reads ``args.quiet`` for its progress (the tqdm bar of
:func:`experiments.common.progress`).

>>> p = parser("demo", population=False)
>>> args = p.parse_args(["--config", "c.py", "--set", "a=1", "b=2", "--set", "c=3", "--quiet"])
>>> args.set, args.quiet
(['a=1', 'b=2', 'c=3'], True)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from typing import Any

from experiments import common


class UsageError(ValueError):
    """A user error in a driver's options or config (reported as ``prog: error: ...``)."""


USER_ERRORS = (UsageError, common.ConfigError, common.DataError)

# flag dest -> config key; path-valued ones are made absolute.
DATA_FLAGS = {"dataset": "dataset", "data_dir": "data_dir", "data_file": "data_file",
              "train_file": "train_file", "test_file": "test_file"}
PATH_KEYS = ("data_dir", "data_file", "train_file", "test_file")


def parser(description: str, *, data: bool = True, population: bool = True,
           out: str = "runs") -> argparse.ArgumentParser:
    """The drivers' common options (see the module docstring); add the driver's own after."""
    p = argparse.ArgumentParser(description=(description or "").strip().split("\n")[0])
    p.add_argument("--config", required=True, help="python file with get_config()")
    p.add_argument("--out", default=out, help="parent of the run directories")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config values (Python literals, dotted keys); repeatable")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bar and no per-run lines")
    if population:
        p.add_argument("--cpu-devices", default="auto", help=common.CPU_DEVICES_HELP)
    if data:
        g = p.add_argument_group("data (experiments.common.load_dataset)")
        g.add_argument("--dataset", help="dataset name (digits, mnist, cifar10, ...)")
        g.add_argument("--data-dir", help="raw files, a tfds data dir, or train.npz + test.npz")
        g.add_argument("--data-file", help="one .npz (images/labels), split train/val/test")
        g.add_argument("--train-file", help=".npz of the training data (val drawn from it)")
        g.add_argument("--test-file", help=".npz of the test data (with --train-file)")
    return p


def config_from_args(args: argparse.Namespace, flags: Mapping[str, str] | None = None,
                     optional: Mapping[str, Any] | None = None, *,
                     driver: str | None = None) -> Any:
    """Loads ``args.config`` (refused when made for another ``driver``), applies the flags in
    ``flags`` (dest -> config key; default :data:`DATA_FLAGS`) that were given, then every
    ``--set`` (type-checked)."""
    config = common.load_config(args.config, driver=driver)
    flags = DATA_FLAGS if flags is None else flags
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        if key in PATH_KEYS:
            value = os.path.abspath(os.path.expanduser(value))
        if key in config:
            common.apply_overrides(config, [f"{key}={value!r}"], optional)
        else:
            config[key] = value
    opt = dict(common.OPTIONAL_KEYS)
    opt.update(optional or {})
    common.apply_overrides(config, args.set, opt)
    return config


def main(
    p: argparse.ArgumentParser,
    argv: list[str] | None,
    run: Callable[[Any, argparse.Namespace], Any],
    *,
    validate: Callable[[Any], None] | None = None,
    flags: Mapping[str, str] | None = None,
    optional: Mapping[str, Any] | None = None,
    members: Callable[[Any, argparse.Namespace], int] | None = None,
    prepare: Callable[[Any, argparse.Namespace], None] | None = None,
    driver: str,
) -> int:
    """Parses ``argv``, builds the config, validates it, runs the driver; returns 0.

    Args:
      p: from :func:`parser` (plus the driver's options).
      argv: the arguments (``None``: ``sys.argv[1:]``).
      run: ``run(config, args)``: the experiment.
      validate: ``validate(config)`` raising :class:`UsageError` / ``ConfigError`` for a
        config that cannot run; called before any JAX work.
      flags: driver flags that set config keys, dest -> key (default :data:`DATA_FLAGS`;
        pass ``{**cli.DATA_FLAGS, "levels": "levels"}`` to add some).
      optional: extra keys ``--set`` may add although the config lacks them, with types.
      members: ``members(config, args) -> population size`` for ``--cpu-devices``
        (population drivers; applied before any JAX operation).
      prepare: ``prepare(config, args)`` for driver flags that need logic, before
        ``validate``.
      driver: the driver's name (``"lottery"`` for ``experiments/lottery.py``); a config
        whose ``driver`` key names another is refused.

    User errors (:data:`USER_ERRORS`) anywhere, also in ``run`` before training starts
    (e.g. a data file that does not load), exit with status 2 through ``p.error``.
    """
    args = p.parse_args(argv)
    try:
        config = config_from_args(args, flags, optional, driver=driver)
        if prepare is not None:
            prepare(config, args)
        if validate is not None:
            validate(config)
        if members is not None and hasattr(args, "cpu_devices"):
            common.cpu_devices(args.cpu_devices, int(members(config, args)))
        run(config, args)
    except USER_ERRORS as e:
        p.error(str(e))
    return 0


def runner(run: Callable[..., Any]) -> Callable[[Any, argparse.Namespace], Any]:
    """The usual ``run`` for :func:`main`: ``run(config, args.out, show_progress=...)``, the
    progress bar off with ``--quiet``."""
    return lambda config, args: run(config, args.out, show_progress=not args.quiet)


def positive(config: Any, *keys: str) -> None:
    """:class:`UsageError` unless every ``config[key]`` is an int >= 1 (names key and value)."""
    for key in keys:
        v = config.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UsageError(f"config {key}={v!r}: must be an integer >= 1")


def check_training(config: Any) -> None:
    """The checks every training config needs: model, optimizer, step counts, checkpoints."""
    if config.get("model", "lenet300") not in common.MODELS:
        raise UsageError(f"config model={config.get('model')!r}: unknown; known: "
                         f"{list(common.MODELS)}")
    if config.get("optimizer", "adam") not in common.OPTIMIZERS:
        raise UsageError(f"config optimizer={config.get('optimizer')!r}: unknown; known: "
                         f"{list(common.OPTIMIZERS)}")
    positive(config, "num_steps", "batch_size", "eval_every")
    every = config.get("checkpoint_every")
    if every is not None:
        positive(config, "checkpoint_every")
        if every % config.eval_every:
            raise UsageError(f"config checkpoint_every={every} must be a multiple of "
                             f"eval_every={config.eval_every}")
    if not float(config.get("learning_rate", 1.0)) > 0:
        raise UsageError(f"config learning_rate={config.get('learning_rate')!r}: must be > 0")
