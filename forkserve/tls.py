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
