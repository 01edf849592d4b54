"""Moved to services/vision/training/dataset.py (offline tools import the simulator; the service does not)."""

from services.vision.training.dataset import *  # noqa: F403
from services.vision.training.dataset import main  # noqa: F401

if __name__ == "__main__":
    main()
