"""The packaging PLC's batch reports, and the SFTP server (asyncssh) they are fetched from.

Every `batch_period_s` simulated seconds the PLC writes one CSV file into `<root>/reports/`:

    batch_id,started_at,ended_at,packs,rejects,mean_pack_weight_g
    line1-B00003,2026-11-29T12:10:00.000Z,2026-11-29T12:15:00.000Z,30,0,252.14

named `packaging_<batch_id>_<ended, YYYYMMDDTHHMMSSZ>.csv`. It is written as `.<name>.part` first and renamed
when complete, so a reader that lists `*.csv` never sees half a file.

The SFTP server serves `<root>` as `/` (chrooted, SFTP only: no shell, no SCP), with password login for the
configured users and/or public-key login for the keys in an OpenSSH authorized_keys file. Readers may rename
or delete files (for example move them to `/done/` once ingested).
"""

from __future__ import annotations

import csv
import hmac
import io
import logging
import os
from pathlib import Path

import asyncssh

from lineguard.logs import event
from simulator.model import BatchReport, CookieLine, StepEvents

log = logging.getLogger("simulator.sftp")
CSV_COLUMNS = ("batch_id", "started_at", "ended_at", "packs", "rejects", "mean_pack_weight_g")
REPORTS_SUBDIR = "reports"


def batch_csv(report: BatchReport, sim: CookieLine) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # what a PLC's CSV export writes
    writer.writerow(CSV_COLUMNS)
    writer.writerow([report.batch_id, sim.clock.iso(report.started_s), sim.clock.iso(report.ended_s), report.packs,
                     report.rejects, f"{report.mean_pack_weight_g:.2f}"])
    return buffer.getvalue()


def write_batch_report(directory: Path, report: BatchReport, sim: CookieLine) -> Path:
    """Write the report under a temporary name, then rename it into place (atomic on one filesystem)."""
    directory.mkdir(parents=True, exist_ok=True)
    ended = sim.clock.at(report.ended_s).strftime("%Y%m%dT%H%M%SZ")
    final = directory / f"packaging_{report.batch_id}_{ended}.csv"
    temporary = directory / f".{final.name}.part"
    with temporary.open("w", encoding="utf-8", newline="") as handle:
        handle.write(batch_csv(report, sim))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return final


class _PlcSshServer(asyncssh.SSHServer):
    def __init__(self, passwords: dict[str, str], key_users: set[str] | None) -> None:
        self.passwords = passwords
        self.key_users = key_users  # None: any user name may log in with an authorized key

    def begin_auth(self, username: str) -> bool:
        return True  # always authenticate

    def password_auth_supported(self) -> bool:
        return bool(self.passwords)

    def validate_password(self, username: str, password: str) -> bool:
        expected = self.passwords.get(username)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Reached only for keys asyncssh already matched against authorized_client_keys.
        return self.key_users is None or username in self.key_users


def load_or_create_host_key(path: Path | None) -> asyncssh.SSHKey:
    """A persistent ed25519 host key (so clients can pin its fingerprint), or a fresh one when path is None."""
    if path is None:
        return asyncssh.generate_private_key("ssh-ed25519")
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key.write_private_key(str(path))
    path.chmod(0o600)
    key.write_public_key(str(path) + ".pub")
    return key


async def start_sftp_server(root: Path, host: str = "127.0.0.1", port: int = 2222,
                            passwords: dict[str, str] | None = None, authorized_keys: Path | None = None,
                            host_key: Path | None = None) -> tuple[asyncssh.SSHAcceptor, int]:
    """Serve `root` over SFTP; returns the acceptor (close it to stop) and the bound port (useful with 0)."""
    passwords = passwords or {}
    if not passwords and authorized_keys is None:
        raise ValueError("the SFTP server needs a password user or an authorized_keys file to let anyone in")
    root.mkdir(parents=True, exist_ok=True)
    chroot = str(root.resolve())
    acceptor = await asyncssh.listen(
        host, port,
        server_host_keys=[load_or_create_host_key(host_key)],
        server_factory=lambda: _PlcSshServer(passwords, None),
        authorized_client_keys=str(authorized_keys) if authorized_keys else None,
        sftp_factory=lambda channel: asyncssh.SFTPServer(channel, chroot=chroot),
        allow_scp=False,
        process_factory=None,
    )
    return acceptor, acceptor.sockets[0].getsockname()[1]


class SftpEmitter:
    """Writes each packaging batch report and (optionally) runs the SFTP server that serves them."""

    name = "sftp"

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int | None = 2222,
                 passwords: dict[str, str] | None = None, authorized_keys: Path | None = None,
                 host_key: Path | None = None) -> None:
        self.root, self.host, self.port = root, host, port
        self.passwords, self.authorized_keys, self.host_key = passwords or {}, authorized_keys, host_key
        self.acceptor: asyncssh.SSHAcceptor | None = None
        self.bound_port: int | None = None
        self.written: list[Path] = []

    @property
    def reports_dir(self) -> Path:
        return self.root / REPORTS_SUBDIR

    async def start(self, sim: CookieLine) -> None:
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        if self.port is not None:
            self.acceptor, self.bound_port = await start_sftp_server(
                self.root, self.host, self.port, self.passwords, self.authorized_keys, self.host_key)
            event(log, "sftp_listening", host=self.host, port=self.bound_port, root=str(self.root),
                  users=sorted(self.passwords), key_login=self.authorized_keys is not None)

    async def on_tick(self, sim: CookieLine, events: StepEvents) -> None:
        for report in events.batches:
            path = write_batch_report(self.reports_dir, report, sim)
            self.written.append(path)
            event(log, "batch_report_written", file=path.name, packs=report.packs, rejects=report.rejects,
                  mean_pack_weight_g=report.mean_pack_weight_g)

    async def stop(self, sim: CookieLine) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            await self.acceptor.wait_closed()
