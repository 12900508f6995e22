"""TLS: the server's `ssl.SSLContext`, built from the settings.

Built once in the master before binding (so a wrong path or a bad key is one
line on stderr and a non-zero exit, not a crash-looping worker), and again in
each worker after fork. The handshake itself runs in `connection.py`,
non-blocking while the connection is parked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forkserve.errors import ConfigError

if TYPE_CHECKING:
    import ssl

_PRIVATE_KEY = b"PRIVATE KEY-----"  # BEGIN PRIVATE KEY, BEGIN RSA/EC/ENCRYPTED PRIVATE KEY
_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError(f"{flag} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot read it: {exc.strerror}") from None


def _check_pem_files(certfile: str, keyfile: str | None) -> None:
    """Name the file and what is missing, where OpenSSL would say "[SSL] PEM lib"."""
    cert = _read(certfile, "--certfile")
    if _CERTIFICATE not in cert:
        raise ConfigError(f"--certfile {certfile}: no PEM certificate in it "
                          "(-----BEGIN CERTIFICATE-----)")
    if keyfile is None:
        if _PRIVATE_KEY not in cert:
            raise ConfigError(f"--certfile {certfile} has no private key in it: give the key "
                              "file with --keyfile")
    elif _PRIVATE_KEY not in _read(keyfile, "--keyfile"):
        raise ConfigError(f"--keyfile {keyfile}: no PEM private key in it "
                          "(-----BEGIN ... PRIVATE KEY-----)")


def make_context(
    certfile: str,
    keyfile: str | None,
    ca_certs: str | None,
    cert_reqs: int,
    ciphers: str | None,
) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, the system's default cipher policy unless told.

    Raises ConfigError naming the setting that is wrong.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _check_pem_files(certfile, keyfile)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"--keyfile {keyfile or certfile}: the private key does not "
                              f"match the certificate in {certfile}") from None
        raise ConfigError(f"--certfile/--keyfile: cannot load the certificate {certfile} and "
                          f"key {keyfile or '(in the same file)'}: {reason}") from None
    if ca_certs:
        try:
            context.load_verify_locations(ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--ca-certs: cannot load {ca_certs}: {exc}") from None
    if cert_reqs != ssl.CERT_NONE and not ca_certs:
        raise ConfigError("--cert-reqs optional/required needs --ca-certs to verify clients")
    context.verify_mode = ssl.VerifyMode(cert_reqs)
    if ciphers:
        try:
            context.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ciphers: no usable cipher in {ciphers!r}") from None
    # No TLS compression (CRIME) and no renegotiation a client could use to
    # make the worker do handshakes mid-request.
    context.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context
