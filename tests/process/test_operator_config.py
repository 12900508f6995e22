"""Operator-facing start-up: PORT/WEB_CONCURRENCY as defaults, bind and TLS messages
(issue 12). Real `forkserve` processes, started as an operator would."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support import REPO, Server, serve

pytestmark = pytest.mark.process


def run(*args: str, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("FORKSERVE_") and k not in ("PORT", "WEB_CONCURRENCY")}
    full["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'tests' / 'apps'}"
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "forkserve", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_port_and_web_concurrency_do_not_beat_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "forkserve.toml").write_text('bind = ["127.0.0.1:0"]\nworkers = 1\n')
    port = free_port()
    env = {"PORT": str(port), "WEB_CONCURRENCY": "3"}
    with serve("core_apps:app", bind=None, cwd=tmp_path, env=env) as s:
        assert s.address[0] == "127.0.0.1" and s.address[1] != port, s.urls
        assert requests.get(s.url + "/hello", timeout=5).status_code == 200
        s.wait_for_log(r"Ready: generation 1 is serving with 1 worker\n")
        assert len(s.worker_pids()) == 1
        with pytest.raises(OSError):  # nothing on 0.0.0.0:$PORT
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    shown = run("--print-config", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split(" ", 1)[0]: line for line in shown.stdout.splitlines()}
    assert rows["bind"].startswith('bind = ["127.0.0.1:0"]')
    assert rows["bind"].endswith("# forkserve.toml:1 (over env PORT, a default only)")
    assert rows["workers"].endswith("# forkserve.toml:2 (over env WEB_CONCURRENCY, a default only)")


def test_port_alone_still_binds_every_interface(tmp_path: Path) -> None:
    port = free_port()
    with serve("core_apps:app", bind=None, cwd=tmp_path, env={"PORT": str(port)}) as s:
        assert s.urls == [f"http://0.0.0.0:{port}"]


def test_a_bare_port_is_one_line_with_the_two_meanings(tmp_path: Path) -> None:
    done = run("core_apps:app", "--bind", "8000", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "forkserve: error: bind (command line --bind): expected HOST:PORT, got a port alone; "
        "did you mean 0.0.0.0:8000 (every interface) or 127.0.0.1:8000 (this machine only)?"]


def _certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_start_up_errors_name_the_file_and_what_is_missing(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    cases = [
        (["--certfile", str(tmp_path / "nope.pem"), "--keyfile", str(key)],
         f"--certfile {tmp_path}/nope.pem: no such file"),
        (["--certfile", str(cert), "--keyfile", str(tmp_path / "nokey.pem")],
         f"--keyfile {tmp_path}/nokey.pem: no such file"),
        (["--certfile", str(cert)],
         f"--certfile {cert} has no private key in it: give the key file with --keyfile"),
        (["--certfile", str(cert), "--keyfile", str(cert)],
         f"--keyfile {cert}: no PEM private key in it"),
    ]
    for args, message in cases:
        done = run("core_apps:app", "--bind", "127.0.0.1:0", *args, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"forkserve: error: {message}"), lines


def test_the_start_up_line_says_https_when_serving_tls(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server = Server("core_apps:app", "--certfile", str(cert), "--keyfile", str(key))
    with server as s:
        assert len(s.urls) == 1 and s.urls[0].startswith("https://127.0.0.1:"), s.urls
        response = requests.get(s.url + "/hello", timeout=5, verify=str(cert))
        assert response.status_code == 200
