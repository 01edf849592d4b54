"""`python -m services.vision.evaluate`: see services/vision/training/evaluate.py (the documented command)."""

from services.vision.training.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
