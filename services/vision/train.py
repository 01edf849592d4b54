"""`python -m services.vision.train`: see services/vision/training/train.py (kept here as the documented command)."""

from services.vision.training.train import main

if __name__ == "__main__":
    main()
