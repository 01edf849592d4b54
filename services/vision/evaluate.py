"""Moved to services/vision/training/evaluate.py (offline tools import the simulator; the service does not)."""

from services.vision.training.evaluate import *  # noqa: F403
from services.vision.training.evaluate import main  # noqa: F401

if __name__ == "__main__":
    main()
