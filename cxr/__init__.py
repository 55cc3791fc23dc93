"""cxr: an experiment framework for deep learning on chest X-rays (PyTorch Lightning + Hydra)."""
__version__ = "0.1.0"
