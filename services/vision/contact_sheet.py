"""Moved to services/vision/training/contact_sheet.py (offline tools import the simulator; the service does not)."""

from services.vision.training.contact_sheet import *  # noqa: F403
from services.vision.training.contact_sheet import main  # noqa: F401

if __name__ == "__main__":
    main()
