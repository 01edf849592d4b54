"""SFTP completeness against a real OpenSSH server (Debian openssh-server's sshd, internal-sftp, on a free port):
a slow PLC that pauses mid-upload, a writer that announces completion with a marker file, and one that uploads
as .part and renames. Uploads go through OpenSSH's own `sftp` client where a plant would script it that way, and
through an asyncssh writer where the pauses must fall mid-line. Each file must arrive whole, exactly once."""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import asyncssh
import pytest
import yaml
from ingest_helpers import TopicReader

from lineguard.embedded import free_port, start_listening
from services.ingest.pipeline import DEAD_LETTERS, READINGS, IngestPipeline
from services.ingest.sftp_poller import SftpPoller, load_sources

pytestmark = pytest.mark.integration

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HEADER = "batch_id,ended_at,mean_pack_weight_g"
QUIET_S = 0.6


class OpenSsh:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.user = getpass.getuser()
        self.key = base / "client_key"
        self.root = base / "plc"
        (self.root / "reports").mkdir(parents=True)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
        authorized = base / "authorized_keys"
        authorized.write_text((base / "client_key.pub").read_text())
        authorized.chmod(0o600)
        self.port = free_port()
        config = base / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {base / "host_key"}
            PidFile {base / "sshd.pid"}
            AuthorizedKeysFile {authorized}
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            StrictModes no
            UsePAM no
            Subsystem sftp internal-sftp
            LogLevel ERROR
            """))
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(exist_ok=True)  # the privilege separation directory sshd insists on
        self.proc = start_listening([SSHD, "-D", "-e", "-f", str(config)], self.port, "sshd",
                                    log_path=base / "sshd.log")

    def sftp_batch(self, *commands: str) -> None:
        """Run commands through OpenSSH's sftp client, as a plant's upload script would."""
        batch = self.base / "batch.txt"
        batch.write_text("\n".join(commands) + "\n")
        subprocess.run(["sftp", "-q", "-b", str(batch), "-i", str(self.key), "-P", str(self.port),
                        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-o", "BatchMode=yes", f"{self.user}@127.0.0.1"], check=True, capture_output=True,
                       timeout=30)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def openssh(tmp_path_factory):
    if not os.path.exists(SSHD):
        pytest.skip("OpenSSH server not installed (make system-deps installs openssh-server)")
    server = OpenSsh(tmp_path_factory.mktemp("openssh"))
    yield server
    server.close()


def poller_for(openssh: OpenSsh, settings, name: str, **source) -> tuple[SftpPoller, IngestPipeline]:
    directory = openssh.root / name
    directory.mkdir()
    path = openssh.base / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"sources": [{
        "name": name, "host": "127.0.0.1", "port": openssh.port, "username": openssh.user,
        "client_keys": [str(openssh.key)], "directory": str(directory), "done_directory": str(directory / "done"),
        "device": "line1-packaging", "timestamp": {"column": "ended_at"},
        "metrics": [{"column": "mean_pack_weight_g", "metric": "mean_pack_weight", "unit": "g"}],
        "attributes": ["batch_id"], **source}]}))
    pipeline = IngestPipeline(settings)
    return SftpPoller(pipeline, load_sources(path), openssh.base / f"{name}-ledger.jsonl",
                      quiet_period_s=QUIET_S), pipeline


def run(poller: SftpPoller, pipeline: IngestPipeline, scenario) -> None:  # noqa: ANN001
    """Run one scenario against the poller, then close its connection and the pipeline."""

    async def main() -> None:
        try:
            await scenario()
        finally:
            await poller._drop_connection(poller.sources[0])

    try:
        asyncio.run(main())
    finally:
        pipeline.close()


def rows(first: int, last: int) -> str:
    return "".join(f"B{i:03d},2026-11-29T12:{i % 60:02d}:00Z,25{i % 10}.5{i % 10}\n" for i in range(first, last))


async def poll_until(poller: SftpPoller, count: int = 1, timeout: float = 10.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    done = 0
    while done < count and asyncio.get_running_loop().time() < deadline:
        done += await poller.poll(poller.sources[0])
        await asyncio.sleep(0.1)
    return done


def weights(settings, expected: int) -> dict[str, float]:
    readings = TopicReader(settings, READINGS).read_until(expected)
    assert len(readings) == expected, [r.value["attributes"]["batch_id"] for r in readings]
    return {r.value["attributes"]["batch_id"]: r.value["value"] for r in readings}


def test_a_slow_plc_pausing_mid_upload_is_taken_only_once_complete(openssh, ingest_settings):
    settings = ingest_settings()
    poller, pipeline = poller_for(openssh, settings, "slow")
    source = poller.sources[0]
    target = f"{source.directory}/batch-1.csv"

    async def scenario() -> None:
        conn = await asyncssh.connect("127.0.0.1", openssh.port, username=openssh.user,
                                      client_keys=[str(openssh.key)], known_hosts=None)
        async with conn, conn.start_sftp_client() as sftp, sftp.open(target, "wb") as handle:
            await handle.write((HEADER + "\n" + rows(0, 8)).encode())
            # Paused at a line boundary for several poll intervals, shorter than the quiet period.
            for _ in range(3):
                assert await poller.poll(source) == 0
                await asyncio.sleep(QUIET_S / 4)
            await handle.write(rows(8, 12).encode() + b"B012,2026-11-29T12:12:00Z,25")  # mid-value
            assert await poller.poll(source) == 0  # grown since the last poll
            await asyncio.sleep(QUIET_S + 0.2)  # longer than the quiet period this time
            for _ in range(2):
                assert await poller.poll(source) == 0  # quiet, but the last line has no newline
            assert poller.stats["incomplete_waits"] >= 1
            await handle.write(b"3.53\n" + rows(13, 28).encode())
        assert await poll_until(poller) == 1

    run(poller, pipeline, scenario)
    got = weights(settings, 28)
    assert got["B012"] == 253.53 and got["B027"] == 257.57
    assert sorted(p.name for p in Path(source.done_directory).iterdir()) == ["batch-1.csv"]
    assert TopicReader(settings, DEAD_LETTERS, decode=False).poll(0.5) == []


def test_a_marker_source_waits_for_its_marker_file(openssh, ingest_settings, tmp_path):
    settings = ingest_settings()
    poller, pipeline = poller_for(openssh, settings, "marker", marker=True)
    source = poller.sources[0]
    local = tmp_path / "batch-2.csv"
    local.write_text(HEADER + "\n" + rows(0, 5))
    (tmp_path / "batch-2.csv.ok").write_text("")

    async def scenario() -> None:
        await asyncio.to_thread(openssh.sftp_batch, f"put {local} {source.directory}/batch-2.csv")
        await asyncio.sleep(QUIET_S + 0.2)
        for _ in range(3):  # complete and quiet, but no marker yet
            assert await poller.poll(source) == 0
        await asyncio.to_thread(openssh.sftp_batch, f"put {tmp_path / 'batch-2.csv.ok'} "
                                                    f"{source.directory}/batch-2.csv.ok")
        assert await poller.poll(source) == 1  # taken at once when the marker is there

    run(poller, pipeline, scenario)
    assert len(weights(settings, 5)) == 5
    assert sorted(p.name for p in Path(source.done_directory).iterdir()) == ["batch-2.csv", "batch-2.csv.ok"]
    assert sorted(p.name for p in Path(source.directory).iterdir()) == ["done"]


def test_an_upload_as_part_is_taken_only_after_its_rename(openssh, ingest_settings, tmp_path):
    settings = ingest_settings()
    poller, pipeline = poller_for(openssh, settings, "rename")
    source = poller.sources[0]
    local = tmp_path / "batch-3.csv"
    local.write_text(HEADER + "\n" + rows(0, 6))

    async def scenario() -> None:
        await asyncio.to_thread(openssh.sftp_batch, f"put {local} {source.directory}/batch-3.csv.part")
        await asyncio.sleep(QUIET_S + 0.2)
        for _ in range(3):  # a .part name is never taken, however stable
            assert await poller.poll(source) == 0
        await asyncio.to_thread(openssh.sftp_batch, f"rename {source.directory}/batch-3.csv.part "
                                                    f"{source.directory}/batch-3.csv")
        assert await poll_until(poller) == 1

    run(poller, pipeline, scenario)
    assert len(weights(settings, 6)) == 6
    assert sorted(p.name for p in Path(source.done_directory).iterdir()) == ["batch-3.csv"]
