"""Opening the study: optuna imported on demand, the storage URL checked, a study's identity kept.

A study records in its user attributes the optimizer it tunes and the signature of its search space
and objective (:func:`thor_planner.tune.space.signature`); continuing it with another optimizer or
another space is refused, so every trial of a study measures the same thing.
"""

from __future__ import annotations

from thor_planner.utils.errors import ConfigError, UserError

DEFAULT_STORAGE = "sqlite:///tune.db"


class TuneError(UserError):
    """Bad input to the tuner (one line in the CLI, exit code 2)."""


class TuneConfigError(ConfigError, TuneError):
    """An invalid tuning argument (``Invalid trials=0: must be >= 1``)."""


def import_optuna():
    """optuna, or a :class:`TuneError` saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise TuneError("optuna is not installed: pip install 'thor-plan[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_storage(url: str):
    """An optuna RDB storage for ``url`` (SQLite, PostgreSQL, MySQL, ... any SQLAlchemy URL)."""
    optuna = import_optuna()
    import sqlalchemy.exc

    try:
        from sqlalchemy.engine import make_url

        make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise TuneError(f"Unknown --storage URL '{url}': pass an optuna RDB URL such as {DEFAULT_STORAGE} "
                        "or postgresql://user:password@host/database") from None
    try:
        return optuna.storages.RDBStorage(url)
    except (sqlalchemy.exc.NoSuchModuleError, ImportError):
        raise TuneError(f"Unknown --storage URL '{url}': its database driver is not installed; pass an optuna "
                        f"RDB URL such as {DEFAULT_STORAGE}, or install the driver") from None
    except Exception:  # OperationalError, DBAPIError, ...: the database cannot be reached or opened
        raise TuneError(f"Cannot reach --storage '{url}': check that the database server is up, the "
                        "folder exists and the URL is right") from None


def _qmc(seed: int):
    """optuna's scrambled Sobol sampler (quiet about being experimental: its sequence is what we use)."""
    import warnings

    optuna = import_optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)


def open_study(*, storage_url: str, name: str, optimizer: str, space_signature: str, seed: int,
               pruner: str, sampler: str = "tpe"):
    """Create the study or continue it; refuse one made for another optimizer or search space.

    The sampler (``tpe`` or ``qmc``) is seeded with ``seed`` plus the number of trials already in
    the study, so a continued study does not repeat its first trials' parameters and two runs from
    the same state ask the same questions.
    """
    optuna = import_optuna()
    storage = open_storage(storage_url)
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    existing = summaries.get(name)
    if existing is not None:
        attrs = existing.user_attrs
        if attrs.get("optimizer") != optimizer:
            raise TuneError(f"Study '{name}' in '{storage_url}' tunes optimizer '{attrs.get('optimizer')}', not "
                            f"'{optimizer}': pick another --study name")
        if attrs.get("space") != space_signature:
            raise TuneError(f"Study '{name}' in '{storage_url}' was made with another search space or objective "
                            "(model, data, budget, batch size, evaluation interval or seed differ): pick another "
                            "--study name")
    done = existing.n_trials if existing is not None else 0
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed + done, n_startup_trials=5), "qmc": lambda: _qmc(seed)}
    pruners = {"median": optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
               "none": optuna.pruners.NopPruner()}
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", sampler=samplers[sampler](),
                                pruner=pruners[pruner], load_if_exists=True)
    if existing is None:
        study.set_user_attr("optimizer", optimizer)
        study.set_user_attr("space", space_signature)
    return study
