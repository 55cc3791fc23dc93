"""``python -m cxr.model_card <run dir>``: (re)write a finished training run's model_card.md
(:func:`cxr.evaluation.model_card.main`)."""

from cxr.evaluation.model_card import main

if __name__ == "__main__":
    raise SystemExit(main())
