"""cxr's Hydra configs. Importing this package (Hydra does, for ``pkg://cxr.conf``) registers the resolver the run
directories use: ``${cxr.run_name:}``, the run's readable name (cxr.run_dir.run_name)."""

from omegaconf import OmegaConf


def _run_name(*, _root_):
    from cxr.run_dir import run_name

    return run_name(_root_)


if not OmegaConf.has_resolver("cxr.run_name"):
    OmegaConf.register_new_resolver("cxr.run_name", _run_name)
