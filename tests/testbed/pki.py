"""A throw-away PKI for the test control plane, made in-process with ``cryptography``.

envtest's recipe: one CA signs the apiserver's serving certificate, a second CA signs client
certificates (the admin's carries O=system:masters), and one key pair signs service-account
tokens. EC P-256 keys keep generation in the milliseconds.

Both CAs' keys are kept beside their certificates so that more leaves can be signed later:
``issue_client`` for a real node's kubelet (``system:node:<name>`` in ``system:nodes``, as the
Node authorizer wants), its kube-proxy (``system:kube-proxy``, which the default RBAC binds to
``system:node-proxier``) and the apiserver's front proxy towards aggregated APIs;
``issue_server`` for the servers the apiserver or metrics-server dial and verify (the kubelet,
metrics-server), so nothing in the testbed skips TLS verification.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_FOR = dt.timedelta(days=7)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


@dataclass(frozen=True)
class _CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, cn: str) -> _CA:
        key = _key()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID_FOR)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def issue(
        self, subject: x509.Name, *, server_names: list[str] | None = None
    ) -> tuple[bytes, bytes]:
        """Sign a leaf certificate: for serving when ``server_names`` is given, else a client's."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID_FOR)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server_names:
            alt: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alt.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return _pem_cert(builder.sign(self.key, hashes.SHA256())), _pem_key(key)


@dataclass(frozen=True)
class Pki:
    """Paths of every file the control plane's components are started with."""

    serving_ca: Path
    serving_ca_key: Path
    serving_cert: Path
    serving_key: Path
    client_ca: Path
    client_ca_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public: Path
    sa_private: Path


def make_pki(directory: Path, server_names: list[str]) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    serving_ca, client_ca = _CA.create("recsys-testbed-ca"), _CA.create("recsys-testbed-client-ca")
    serving_cert, serving_key = serving_ca.issue(_name("kube-apiserver"), server_names=server_names)
    admin_cert, admin_key = client_ca.issue(_name("admin", "system:masters"))
    sa_key = _key()
    files = {
        "serving_ca": _pem_cert(serving_ca.cert),
        "serving_ca_key": _pem_key(serving_ca.key),
        "serving_cert": serving_cert,
        "serving_key": serving_key,
        "client_ca": _pem_cert(client_ca.cert),
        "client_ca_key": _pem_key(client_ca.key),
        "admin_cert": admin_cert,
        "admin_key": admin_key,
        "sa_public": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "sa_private": _pem_key(sa_key),
    }
    paths: dict[str, Path] = {}
    for field, content in files.items():
        path = directory / f"{field.replace('_', '-')}.pem"
        path.write_bytes(content)
        path.chmod(0o600)
        paths[field] = path
    return Pki(**paths)


def _load_ca(cert: Path, key: Path) -> _CA:
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return _CA(private, x509.load_pem_x509_certificate(cert.read_bytes()))


def issue_client(pki: Pki, directory: Path, cn: str, org: str | None = None) -> tuple[Path, Path]:
    """A client certificate for ``cn`` (group ``org``) from the client CA: (cert, key) paths."""
    ca = _load_ca(pki.client_ca, pki.client_ca_key)
    return _write_leaf(directory, cn, ca.issue(_name(cn, org)))


def issue_server(pki: Pki, directory: Path, cn: str, server_names: list[str]) -> tuple[Path, Path]:
    """A serving certificate for ``server_names`` (DNS names or IP addresses) from the serving
    CA, which every testbed client already trusts: (cert, key) paths."""
    ca = _load_ca(pki.serving_ca, pki.serving_ca_key)
    return _write_leaf(directory, cn, ca.issue(_name(cn), server_names=server_names))


def _write_leaf(directory: Path, cn: str, pems: tuple[bytes, bytes]) -> tuple[Path, Path]:
    cert_pem, key_pem = pems
    directory.mkdir(parents=True, exist_ok=True)
    stem = cn.replace(":", "-")
    paths = (directory / f"{stem}-cert.pem", directory / f"{stem}-key.pem")
    for path, content in zip(paths, (cert_pem, key_pem), strict=True):
        path.write_bytes(content)
        path.chmod(0o600)
    return paths
