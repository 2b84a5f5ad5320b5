"""OPC UA secure channel setup and the naming of connect failures.

`apply_security` configures an asyncua `Client` before `connect()`: policy and mode, the
client certificate and key, the application URI taken from that certificate (servers check
that they match), and, with a trust folder, a validator that refuses any server certificate
not in the folder (or not signed by a CA there). `connect_reason` turns what asyncua raises
into the reason a `bad` sample carries: a certificate the server rejects is named as ours
(path and thumbprints, to be trusted on the server), one our trust folder refuses as the
server's (thumbprints, and the folder to copy it into).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from drivers.settings import OpcUaSecurity

POLICY_CLASSES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


class TrustCheck:
    """Our check of the server's certificate; remembers the certificate it refused, so a
    refusal is told as ours, not the server's."""

    def __init__(self, validator: CertificateValidator) -> None:
        self.validator = validator
        self.refused: x509.Certificate | None = None

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        self.refused = None
        try:
            await self.validator(cert, app)
        except ServiceError:
            self.refused = cert
            raise


async def apply_security(client: Client, sec: OpcUaSecurity) -> TrustCheck | None:
    """Set up the secure channel (asyncua fetches the server's endpoints to do so); the check
    of the server's certificate, with a trust folder."""
    if sec.policy == "None":
        return None
    assert sec.certificate and sec.private_key  # checked when the driver was built
    client.application_uri = application_uri(sec.certificate) or client.application_uri
    await client.set_security(
        POLICY_CLASSES[sec.policy], sec.certificate, sec.private_key, mode=MODES[sec.mode]
    )
    if not sec.trust_dir:
        return None
    store = TrustStore([Path(sec.trust_dir)], [])
    try:
        await store.load()
    except ValueError as error:
        # cryptography refuses an empty store; a key file in the folder does not parse.
        if not certificate_files(sec.trust_dir):
            raise ValueError(f"trust folder {sec.trust_dir} holds no certificate (.der or "
                             ".pem): no server can be trusted") from error
        raise ValueError(f"trust folder {sec.trust_dir}: a file is not a certificate "
                         f"({error})") from error
    check = TrustCheck(CertificateValidator(
        CertificateValidatorOptions.TIME_RANGE
        | CertificateValidatorOptions.URI
        | CertificateValidatorOptions.TRUSTED
        | CertificateValidatorOptions.PEER_SERVER,
        store,
    ))
    client.certificate_validator = check
    return check


def connect_reason(exc: BaseException, *, endpoint: str, timeout_s: float,
                   sec: OpcUaSecurity, check: TrustCheck | None = None) -> str:
    """The reason of a failed connect or request, named for people reading the logs."""
    if check is not None and check.refused is not None:
        name = ua.StatusCode(exc.code).name if isinstance(exc, ua.UaStatusCodeError) else "?"
        return (f"security: keyop does not trust the server certificate of {endpoint} "
                f"({thumbprints(check.refused)}): {name}; to trust it, copy the server's "
                f"certificate into the trust folder {sec.trust_dir}")
    if isinstance(exc, ua.UaStatusCodeError):
        name = ua.StatusCode(exc.code).name
        if "Certificate" in name or "Security" in name:
            return f"security: {endpoint} rejected keyop's client certificate: {name}" + (
                ours(sec))
        if "Identity" in name or "User" in name:
            return f"auth: {endpoint} refused the user: {name}"
        return f"comm_lost: {endpoint} answered {name}"
    if isinstance(exc, AssertionError) and sec.policy != "None":
        # asyncua's OpenSecureChannel fails on an assert when the server answers it with a
        # fault: with security on, that is a server refusing our certificate.
        return (f"security: {endpoint} refused the secure channel (most often: it rejects "
                "keyop's client certificate)" + ours(sec))
    if isinstance(exc, TimeoutError):
        return f"comm_timeout: no answer from {endpoint} within {timeout_s:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return f"comm_lost: connection refused by {endpoint}"
    if isinstance(exc, ValueError):
        return f"security: {endpoint}: {exc}"
    return f"comm_lost: cannot connect to {endpoint} ({type(exc).__name__}: {exc})"


def ours(sec: OpcUaSecurity) -> str:
    """Where the operator finds our certificate to trust it on the server, and its prints."""
    if not sec.certificate:
        return ""
    try:
        prints = thumbprints(load_certificate(Path(sec.certificate).read_bytes()))
    except (OSError, ValueError) as error:
        prints = f"unreadable: {error}"
    return (f"; trust keyop's certificate {sec.certificate} ({prints}) on the server, "
            "e.g. in its trusted clients list")


def thumbprints(cert: x509.Certificate) -> str:
    """The SHA-1 thumbprint OPC UA tools show, and the SHA-256 one."""
    return (f"SHA-1 {cert.fingerprint(hashes.SHA1()).hex().upper()}, "
            f"SHA-256 {cert.fingerprint(hashes.SHA256()).hex().upper()}")


def load_certificate(data: bytes) -> x509.Certificate:
    """A certificate from PEM or DER bytes."""
    return (x509.load_pem_x509_certificate(data) if data.startswith(b"-----")
            else x509.load_der_x509_certificate(data))


def certificate_files(folder: str) -> list[Path]:
    """The .der/.pem files of a trust folder (a few directory entries, read at connect)."""
    return [f for f in Path(folder).glob("*.*") if f.suffix.lower() in (".der", ".pem")]


def application_uri(certificate: str) -> str | None:
    """The URI in a certificate's subjectAltName (asyncua must present the same one)."""
    try:
        cert = load_certificate(Path(certificate).read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    uris: Sequence[str] = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
