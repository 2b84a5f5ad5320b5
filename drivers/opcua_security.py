"""OPC UA secure channel setup and the naming of connect failures.

`apply_security` configures an asyncua `Client` before `connect()`: policy and mode, the
client certificate and key, the application URI taken from that certificate (servers check
that they match), and, with a trust folder, a validator that refuses any server certificate
not in the folder (or not signed by a CA there). `connect_reason` turns what asyncua raises
into the reason a `bad` sample carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509

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


async def apply_security(client: Client, sec: OpcUaSecurity) -> None:
    """Set up the secure channel (asyncua fetches the server's endpoints to do so)."""
    if sec.policy == "None":
        return
    assert sec.certificate and sec.private_key  # checked when the driver was built
    client.application_uri = application_uri(sec.certificate) or client.application_uri
    await client.set_security(
        POLICY_CLASSES[sec.policy], sec.certificate, sec.private_key, mode=MODES[sec.mode]
    )
    if not sec.trust_dir:
        return
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
    client.certificate_validator = CertificateValidator(
        CertificateValidatorOptions.TIME_RANGE
        | CertificateValidatorOptions.URI
        | CertificateValidatorOptions.TRUSTED
        | CertificateValidatorOptions.PEER_SERVER,
        store,
    )


def connect_reason(exc: BaseException, *, endpoint: str, timeout_s: float,
                   trust_dir: str | None) -> str:
    """The reason of a failed connect or request, named for people reading the logs."""
    if isinstance(exc, ua.UaStatusCodeError):
        name = ua.StatusCode(exc.code).name
        if "Certificate" in name or "Security" in name:
            hint = f" (trust folder {trust_dir})" if trust_dir and "Untrusted" in name else ""
            return f"security: {endpoint} refused: {name}{hint}"
        if "Identity" in name or "User" in name:
            return f"auth: {endpoint} refused the user: {name}"
        return f"comm_lost: {endpoint} answered {name}"
    if isinstance(exc, TimeoutError):
        return f"comm_timeout: no answer from {endpoint} within {timeout_s:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return f"comm_lost: connection refused by {endpoint}"
    if isinstance(exc, ValueError):
        return f"security: {endpoint}: {exc}"
    return f"comm_lost: cannot connect to {endpoint} ({type(exc).__name__}: {exc})"


def certificate_files(folder: str) -> list[Path]:
    """The .der/.pem files of a trust folder (a few directory entries, read at connect)."""
    return [f for f in Path(folder).glob("*.*") if f.suffix.lower() in (".der", ".pem")]


def application_uri(certificate: str) -> str | None:
    """The URI in a certificate's subjectAltName (asyncua must present the same one)."""
    try:
        data = Path(certificate).read_bytes()
        cert = (x509.load_pem_x509_certificate(data) if data.startswith(b"-----")
                else x509.load_der_x509_certificate(data))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    uris: Sequence[str] = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
