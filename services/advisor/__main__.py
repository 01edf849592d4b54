"""`python -m services.advisor`: unified line topics -> five-minute windows -> recommendations, plus chat."""

from services.advisor.service import main

if __name__ == "__main__":
    main()
