"""`python -m services.console`: the operator console (web app and its backend)."""

from services.console.service import main

if __name__ == "__main__":
    raise SystemExit(main())
