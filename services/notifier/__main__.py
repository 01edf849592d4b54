"""`python -m services.notifier`: recommendations, critical alarms and action results -> the operators' channels;
their answers -> feedback.v1 and the actuator. A Faust app inside the shared service runtime."""

from lineguard.service import run_service
from services.notifier.service import build
from services.notifier.settings import NotifierSettings

if __name__ == "__main__":
    run_service(NotifierSettings, build)
