"""`python -m services.actuator`: proposed setpoint changes -> safety policy, approvals, control API -> actions.v1."""

from services.actuator.service import main

if __name__ == "__main__":
    main()
