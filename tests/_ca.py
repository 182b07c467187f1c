"""A certificate authority made for one test session, and server certificates signed by
it: for loopback (127.0.0.1 and localhost: the HTTPS registries and the token server), or
for given names (the web world's servers)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


class TestCA:
    """A certificate authority made for one session; issues loopback server certificates."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandport test CA")])
        self.cert = (
            _cert_builder(name, name, self.key.public_key(), days=2)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
              dns_names: tuple[str, ...] = (),
              ips: tuple[str, ...] = ()) -> tuple[Path, Path, x509.Certificate]:
        """A certificate for ``dns_names`` (and ``ips``), or else for 127.0.0.1 and
        localhost: (cert.pem, key.pem, the certificate)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        san = x509.SubjectAlternativeName(
            [*(x509.DNSName(n) for n in dns_names),
             *(x509.IPAddress(ipaddress.ip_address(a)) for a in ips)] if dns_names else [
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
        cert = (
            _cert_builder(subject, self.cert.subject, key.public_key(), days=1)
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path, cert


def _cert_builder(subject: x509.Name, issuer: x509.Name, public_key: object,
                  days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False)
