"""`python -m services.normalizer`: raw topics -> unified line topics and the data lake, plus the asset graph API."""

from services.normalizer.service import main

if __name__ == "__main__":
    raise SystemExit(main())
