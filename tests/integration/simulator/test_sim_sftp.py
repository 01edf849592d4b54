"""Packaging batch reports served by the simulator's SFTP server, fetched by standard SFTP clients."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess

import asyncssh
import pytest

from lineguard.plant import default_plant_path, load_plant
from simulator.clock import SimClock
from simulator.emitters import Runner
from simulator.model import CookieLine
from simulator.scenarios import load_scenario
from simulator.sftp import CSV_COLUMNS, SftpEmitter

pytestmark = [pytest.mark.integration, pytest.mark.anyio]
PLANT = load_plant(default_plant_path())


@pytest.fixture
def client_key(tmp_path):
    key = asyncssh.generate_private_key("ssh-ed25519")
    private = tmp_path / "id_ed25519"
    key.write_private_key(str(private))
    private.chmod(0o600)
    authorized = tmp_path / "authorized_keys"
    key.write_public_key(str(authorized))
    return private, authorized


async def test_batch_reports_over_sftp_with_password_and_key(tmp_path, client_key):
    private_key, authorized_keys = client_key
    root = tmp_path / "plc"
    sim = CookieLine(PLANT, seed=9, clock=SimClock(speed=0), batch_period_s=120,
                     scenario=load_scenario("oven_zone_overheat", PLANT.lines["line1"]))
    emitter = SftpEmitter(root, port=0, passwords={"plc": "pw-123"}, authorized_keys=authorized_keys,
                          host_key=tmp_path / "host_key")
    runner = Runner(sim, [emitter])
    await runner.start()
    try:
        await runner.run(1200)
        port = emitter.bound_port
        assert (tmp_path / "host_key").exists()  # persisted, so clients can pin it

        # A standard client, password login.
        async with asyncssh.connect("127.0.0.1", port, username="plc", password="pw-123", known_hosts=None,
                                    client_keys=None) as connection, connection.start_sftp_client() as sftp:
            names = sorted(n for n in await sftp.listdir("/reports") if n not in (".", ".."))
            assert len(names) == 10 and all(n.startswith("packaging_line1-B") and n.endswith(".csv")
                                            for n in names)
            reports = []
            for name in names:
                async with sftp.open(f"/reports/{name}", "rb") as handle:
                    reports.append((await handle.read()).decode())
            # Readers may move what they have ingested.
            await sftp.mkdir("/done")
            await sftp.rename(f"/reports/{names[0]}", f"/done/{names[0]}")
            assert names[0] in await sftp.listdir("/done")
            assert names[0] not in await sftp.listdir("/reports")
            # Chrooted: "above" the served root is the served root.
            assert sorted(await sftp.listdir("/../..")) == sorted(await sftp.listdir("/"))
            assert not {"etc", "proc"} & set(await sftp.listdir("/../.."))

        # Wrong password: refused.
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect("127.0.0.1", port, username="plc", password="nope", known_hosts=None,
                                        client_keys=None):
                pass

        # The OpenSSH sftp command line client, key login.
        batch = tmp_path / "batch"
        batch.write_text(f"get /reports/{names[-1]} {tmp_path / 'fetched.csv'}\n")
        result = await asyncio.to_thread(
            subprocess.run,
            ["sftp", "-b", str(batch), "-P", str(port), "-i", str(private_key), "-o", "StrictHostKeyChecking=no",
             "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "PasswordAuthentication=no",
             "-o", "BatchMode=yes", "ingest@127.0.0.1"],
            capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "fetched.csv").read_bytes() == reports[-1].encode()
    finally:
        await runner.stop()

    rows = []
    for text in reports:
        parsed = list(csv.reader(io.StringIO(text, newline="")))
        assert tuple(parsed[0]) == CSV_COLUMNS and len(parsed) == 2
        rows.append(dict(zip(CSV_COLUMNS, parsed[1], strict=True)))
    assert [r["batch_id"] for r in rows] == [f"line1-B{i:05d}" for i in range(1, 11)]
    assert all(r["started_at"] < r["ended_at"] and r["ended_at"].endswith("Z") for r in rows)
    assert int(rows[0]["packs"]) == 12 and int(rows[0]["rejects"]) == 0  # 120 cookies in 2 minutes, 10 a pack
    assert 248 < float(rows[0]["mean_pack_weight_g"]) < 256
    # The overheat (from 300 s) burns cookies; burnt cookies are lighter, so late packs fail the check weigher.
    assert int(rows[-1]["rejects"]) > int(rows[-1]["packs"]) / 2
    assert not list((root / "reports").glob(".*.part"))  # temporary names were all renamed into place


async def test_reports_are_written_under_a_temporary_name_then_renamed(tmp_path, monkeypatch):
    import os

    import simulator.sftp as sftp_module

    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst), os.path.exists(src), os.path.exists(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(sftp_module.os, "replace", spy)
    sim = CookieLine(PLANT, seed=1, clock=SimClock(speed=0), batch_period_s=60)
    emitter = SftpEmitter(tmp_path, port=None)
    runner = Runner(sim, [emitter])
    await runner.start()
    await runner.run(60)
    await runner.stop()
    assert len(seen) == 1
    src, dst, src_existed, dst_existed = seen[0]
    assert src == f".{dst}.part" and src_existed and not dst_existed
    assert (tmp_path / "reports" / dst).read_text().startswith(",".join(CSV_COLUMNS))
