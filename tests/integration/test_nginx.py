"""nginx in front, configured by contrib/nginx/forkserve.conf, over a unix socket and TCP."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import shutil
import ssl
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import end, free_port, get, get_json, wait_for
from tests.support import REPO, Server

pytestmark = [pytest.mark.process, pytest.mark.integration]

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                  else None)
CONTRIB = REPO / "contrib" / "nginx" / "forkserve.conf"

if NGINX is None:
    pytestmark.append(pytest.mark.skip(reason="nginx is not installed (Debian: apt-get install "
                                       "nginx; .ci/run installs it)"))


def _self_signed(tmp: Path) -> tuple[Path, Path]:
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
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Stack:
    """forkserve (unix socket + TCP) behind nginx (plain HTTP to each, and TLS)."""

    def __init__(self, tmp: Path, nginx_user: str | None = None,
                 forkserve_args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.sock = tmp / "fs.sock"
        self.unix_port, self.tcp_port, self.tls_port = free_port(), free_port(), free_port()
        # nginx's workers run as this user (root can only run them as someone).
        self.nginx_user = nginx_user or ("root" if os.getuid() == 0 else None)
        self.forkserve = Server("deploy_apps:app", "--workers", "2", "--keep-alive", "30",
                                "--health-path", "/healthz", *forkserve_args,
                                bind=["127.0.0.1:0", f"unix:{self.sock}"])
        self.nginx: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.forkserve.start()
        cert, key = _self_signed(self.tmp)
        conf = CONTRIB.read_text()
        # Only addresses change; every proxy directive is the contrib file's own.
        replacements = {
            "unix:/run/forkserve.sock": f"unix:{self.sock}",
            "127.0.0.1:8000": f"127.0.0.1:{self.forkserve.address[1]}",
            "listen 80;": f"listen 127.0.0.1:{self.unix_port};\n"
                          f"    listen 127.0.0.1:{self.tls_port} ssl;\n"
                          f"    ssl_certificate {cert};\n    ssl_certificate_key {key};",
            "listen 8080;": f"listen 127.0.0.1:{self.tcp_port};",
            "alias /srv/myapp/static/;": f"alias {self.tmp}/static/;",
        }
        (self.tmp / "static").mkdir(exist_ok=True)
        (self.tmp / "static" / "app.css").write_text("body { margin: 0 }\n")
        for old, new in replacements.items():
            assert old in conf, old
            conf = conf.replace(old, new)
        (self.tmp / "forkserve.conf").write_text(conf)
        user = f"user {self.nginx_user};" if self.nginx_user else ""
        (self.tmp / "nginx.conf").write_text(f"""
daemon off;
{user}
worker_processes 1;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {self.tmp}/access.log;
    client_body_temp_path {self.tmp}/body;
    proxy_temp_path {self.tmp}/proxy;
    fastcgi_temp_path {self.tmp}/fastcgi;
    uwsgi_temp_path {self.tmp}/uwsgi;
    scgi_temp_path {self.tmp}/scgi;
    include {self.tmp}/forkserve.conf;
}}
""")
        assert NGINX is not None
        self.nginx = subprocess.Popen(
            [NGINX, "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf")],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "nginx.out", "wb"),
            start_new_session=True,
        )
        wait_for(self._listening, what=f"nginx listening; {self.tmp}/error.log")

    def _listening(self) -> bool:
        assert self.nginx is not None
        if self.nginx.poll() is not None:
            raise AssertionError("nginx exited: " + (self.tmp / "nginx.out").read_text())
        try:
            http.client.HTTPConnection("127.0.0.1", self.tcp_port, timeout=1).connect()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.nginx is not None:
            end(self.nginx)
        self.forkserve.__exit__()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("nginx"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _https(port: int, path: str = "/") -> dict[str, Any]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5,
                                       source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        data: dict[str, Any] = json.loads(resp.read())
        return data
    finally:
        conn.close()


def test_requests_reach_forkserve_over_unix_socket_and_tcp(stack: Stack) -> None:
    via_unix = get_json(("127.0.0.1", stack.unix_port), "/hello?x=1")
    via_tcp = get_json(("127.0.0.1", stack.tcp_port), "/hello")
    assert via_unix["path"] == via_tcp["path"] == "/hello"
    assert via_unix["xff"] == via_tcp["xff"] == "127.0.0.1"  # what nginx saw: us
    assert str(via_tcp["remote_port"]).isdigit()


def test_forwarded_headers_from_trusted_nginx(stack: Stack) -> None:
    # The client comes from 127.0.0.2; nginx (127.0.0.1, or the unix socket) is
    # trusted by default, so forkserve believes its X-Forwarded-For/-Proto.
    for port in (stack.unix_port, stack.tcp_port):
        seen = get_json(("127.0.0.1", port), source="127.0.0.2")
        assert seen["xff"] == "127.0.0.2"
        assert seen["remote_addr"] == "127.0.0.2"
        assert seen["scheme"] == "http"
    seen = _https(stack.tls_port)
    assert (seen["remote_addr"], seen["scheme"]) == ("127.0.0.2", "https")


def test_forwarded_headers_ignored_from_untrusted_peer(stack: Stack) -> None:
    # Straight to forkserve from 127.0.0.2, which is not in --forwarded-allow-ips:
    # the same headers nginx sends are now a client's lies.
    seen = get_json(stack.forkserve.address, source="127.0.0.2",
                    headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    assert seen["xff"] == "203.0.113.9"
    assert (seen["remote_addr"], seen["scheme"]) == ("127.0.0.2", "http")


def test_nginx_reuses_upstream_connections(stack: Stack) -> None:
    ports = {get_json(("127.0.0.1", stack.tcp_port))["remote_port"] for _ in range(30)}
    # Without upstream keep-alive every request would come on a new connection
    # (30 source ports); with it, nginx's one worker keeps reusing one or two.
    assert len(ports) <= 3, ports


def test_a_clients_forwarded_ssl_and_forwarded_headers_are_dropped_by_nginx(
        stack: Stack) -> None:
    # Passed through, they would contradict nginx's X-Forwarded-Proto: forkserve
    # refuses a trusted proxy's conflicting headers with 400.
    for headers in ({"X-Forwarded-Ssl": "on"}, {"Forwarded": "proto=https;for=192.0.2.1"}):
        seen = get_json(("127.0.0.1", stack.unix_port), source="127.0.0.2", headers=headers)
        assert (seen["scheme"], seen["remote_addr"]) == ("http", "127.0.0.2")
        seen = get_json(("127.0.0.1", stack.tcp_port), source="127.0.0.2", headers=headers)
        assert (seen["scheme"], seen["remote_addr"]) == ("http", "127.0.0.2")


def test_static_files_are_served_by_nginx_not_the_app(stack: Stack) -> None:
    status, body, _ = get(("127.0.0.1", stack.unix_port), "/static/app.css")
    assert (status, body) == (200, b"body { margin: 0 }\n")


@pytest.mark.skipif(os.getuid() != 0, reason="needs root: forkserve started as root, "
                    "nginx's workers as www-data")
def test_unix_socket_reachable_by_nginx_workers_running_as_www_data() -> None:
    """As on Debian: forkserve started by root with umask 022 (srwxr-xr-x before
    --unix-socket-mode), nginx's workers as www-data, following docs/deploy.md."""
    import pwd

    try:
        pwd.getpwnam("www-data")
    except KeyError:
        pytest.skip("no www-data user")
    tmp = Path(tempfile.mkdtemp(prefix="forkserve-nginx-"))
    tmp.chmod(0o755)  # the proxy must be able to reach the socket's directory
    old_umask = os.umask(0o022)
    try:
        stack = Stack(tmp, nginx_user="www-data")
        try:
            stack.start()
            status, body, _ = get(("127.0.0.1", stack.unix_port), "/hello")
            assert status == 200, (status, body, (tmp / "error.log").read_text()[-2000:])
            assert json.loads(body)["path"] == "/hello"
            assert stat.S_IMODE(os.stat(stack.sock).st_mode) == 0o666
        finally:
            stack.stop()
    finally:
        os.umask(old_umask)
        shutil.rmtree(tmp, ignore_errors=True)


def test_health_path_through_nginx_and_nginx_config_is_valid(stack: Stack) -> None:
    status, body, _ = get(("127.0.0.1", stack.unix_port), "/healthz")
    assert (status, body) == (200, b"ok\n")  # answered by the worker, not the app's JSON
    assert NGINX is not None
    check = subprocess.run([NGINX, "-t", "-p", str(stack.tmp), "-c",
                            str(stack.tmp / "nginx.conf")], capture_output=True, timeout=20)
    assert check.returncode == 0, check.stderr
