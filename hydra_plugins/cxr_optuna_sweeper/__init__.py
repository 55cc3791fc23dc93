"""cxr's Optuna sweeper for Hydra (``hydra/sweeper: cxr_optuna``, used by ``hparams_search=...``)."""
