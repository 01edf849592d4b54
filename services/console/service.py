"""The console process: `python -m services.console` (or `python -m services.console hash-password`)."""

from __future__ import annotations

import getpass
import sys

from lineguard.service import Runtime, Service, StartupError, run_service
from services.console.app import CLIENT_MAX_SIZE, Console
from services.console.auth import UsersFileError, hash_password
from services.console.settings import ConsoleSettings


def build(rt: Runtime[ConsoleSettings]) -> Service:
    try:
        console = Console(rt.settings, rt.health)
    except (UsersFileError, ValueError, OSError) as exc:
        raise StartupError(str(exc)) from exc
    return Service(routes=console.configure, ready=console.ready, client_max_size=CLIENT_MAX_SIZE)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["hash-password"]:
        password = args[1] if len(args) > 1 else getpass.getpass("password: ")
        print(hash_password(password))
        return 0
    run_service(ConsoleSettings, build)
