"""TLS: the server's `ssl.SSLContext`, built from the settings.

Built once in the master before binding (so a wrong path or a bad key is one
line on stderr and a non-zero exit, not a crash-looping worker), and again in
each worker after fork. The handshake itself runs in `connection.py`,
non-blocking while the connection is parked.
"""

from __future__ import annotations

import ssl

from forkserve.errors import ConfigError

CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def parse_cert_reqs(text: str) -> int:
    """gunicorn's numbers (0, 1, 2) or the names none / optional / required."""
    value = text.strip().lower()
    if value in CERT_REQS:
        return int(CERT_REQS[value])
    if value in ("0", "1", "2"):
        return int(value)
    raise ValueError(f"expected none, optional, required (or 0, 1, 2), got {text!r}")


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
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as exc:
        raise ConfigError(f"--certfile/--keyfile: {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--certfile/--keyfile: cannot load the certificate and key: "
                          f"{exc}") from None
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
