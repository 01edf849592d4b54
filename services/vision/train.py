"""Moved to services/vision/training/train.py (offline tools import the simulator; the service does not)."""

from services.vision.training.train import *  # noqa: F403
from services.vision.training.train import main  # noqa: F401

if __name__ == "__main__":
    main()
