"""What makes a local cluster a secured one: TLS, SCRAM users and ACLs (`python -m local_kafka up --secure`).

Everything is generated on first use in one folder (`.local/kafka/tls/` for the launcher, a temporary
one in tests), readable by its owner only, and never printed:

- ca.pem: the certificate authority that signed the brokers; users pass it as SSL_CAFILE.
- broker.p12: the brokers' key and certificate (for 127.0.0.1 and localhost), a PKCS#12 keystore,
  Kafka's own format, locked with keystore.password.
- admin.password, processor.password, reader-only.password: the SCRAM-SHA-512 users', created when
  a cluster's storage is formatted.

Certificates come from PyCA's `cryptography`, the library Python's TLS tooling is built on; the CA's
key is used once and never written, so nothing else can be signed with it later.

Clients reach the brokers on a SASL_SSL listener: TLS, then a SCRAM password. The controller listener
takes only TLS with a certificate the CA signed (the broker's own), so it needs no password. The KRaft
standard authorizer denies what no ACL allows; `admin` and the broker's certificate are super users.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MECHANISM = "SCRAM-SHA-512"
ADMIN = "admin"
PROCESSOR = "processor"
READER_ONLY = "reader-only"
USERS = (ADMIN, PROCESSOR, READER_ONLY)
BROKER_NAME = "local-kafka-broker"  # the certificate's CN: the broker's principal on the controller listener
CERTIFICATE_DAYS = 825


@dataclass(frozen=True)
class Security:
    """The secrets of one secured setup, shared by its input and output clusters."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.directory / "broker.p12"

    def password(self, name: str) -> str:
        """A user's password (or `keystore`'s), as generated on first use."""
        return (self.directory / f"{name}.password").read_text().strip()

    def ensure(self) -> None:
        """Generate whatever of the CA, the broker keystore and the passwords does not exist yet."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in (*USERS, "keystore"):
            path = self.directory / f"{name}.password"
            if not path.exists():
                # URL-safe characters only: they go into a JAAS line and a --add-scram argument unquoted.
                _write_private(path, secrets.token_urlsafe(24).encode())
        if not (self.ca_file.exists() and self.keystore.exists()):
            ca_pem, keystore = issue_certificates(self.password("keystore"))
            _write_private(self.keystore, keystore)
            self.ca_file.write_bytes(ca_pem)

    def broker_settings(self, port: int, controller_port: int) -> dict[str, str]:
        """server.properties entries for a SASL_SSL client listener and a TLS-only controller listener."""
        admin_login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{self.password(ADMIN)}";'
        )
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.sasl_ssl.{MECHANISM.lower()}.sasl.jaas.config": admin_login,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": self.password("keystore"),
            "ssl.key.password": self.password("keystore"),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca_file),
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN};User:CN={BROKER_NAME}",
        }

    def format_arguments(self) -> list[str]:
        """StorageTool arguments that create the SCRAM users with the cluster."""
        arguments = []
        for user in USERS:
            arguments += ["--add-scram", f"{MECHANISM}=[name={user},password={self.password(user)}]"]
        return arguments

    def redact(self, text: str) -> str:
        """`text` with every generated secret replaced, for messages that quote a tool's output."""
        for name in (*USERS, "keystore"):
            text = text.replace(self.password(name), "***")
        return text

    def client_settings(self, user: str) -> dict[str, Any]:
        """kafka-python settings for `user` on either cluster."""
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.password(user),
            "ssl_cafile": str(self.ca_file),
        }

    def processor_environment(self, user: str) -> dict[str, str]:
        """The processor's settings for `user`, as a user puts them in .env."""
        return {
            "SECURITY_PROTOCOL": "SASL_SSL",
            "SASL_MECHANISM": MECHANISM,
            "SASL_USERNAME": user,
            "SASL_PASSWORD": self.password(user),
            "SSL_CAFILE": str(self.ca_file),
        }


@dataclass(frozen=True)
class Grant:
    """One ACL: `user` may do `operation` on the topic or group `name` (literal, from any host)."""

    user: str
    resource: str  # "topic" or "group"
    name: str
    operation: str  # Kafka's name: READ, WRITE, DESCRIBE_CONFIGS...


def processor_grants(user: str, input_topic: str, group: str) -> tuple[Grant, ...]:
    """On the input cluster, the least the processor needs: read its topic, use its group."""
    return (Grant(user, "topic", input_topic, "READ"), Grant(user, "group", group, "READ"))


def producer_grants(user: str, *topics: str) -> tuple[Grant, ...]:
    """On the output cluster: write each topic, and read its size limit (max.message.bytes) at start."""
    return tuple(Grant(user, "topic", topic, op) for topic in topics for op in ("WRITE", "DESCRIBE_CONFIGS"))


def reader_grants(user: str, *topics: str, group: str | None = None) -> tuple[Grant, ...]:
    """Read, and nothing else: what the `reader-only` user may (the processor must refuse to run as it),
    and what the processor may on the topics its dashboard reads back."""
    grants = tuple(Grant(user, "topic", topic, "READ") for topic in topics)
    return grants + ((Grant(user, "group", group, "READ"),) if group else ())


def issue_certificates(keystore_password: str, common_name: str = "local-kafka CA") -> tuple[bytes, bytes]:
    """A new CA and a broker certificate it signs: (the CA's certificate as PEM, the broker's PKCS#12 keystore)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # key_cert_sign, crl_sign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_NAME)]))
        .issuer_name(ca_name)
        .public_key(broker_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    keystore = pkcs12.serialize_key_and_certificates(
        BROKER_NAME.encode(),
        broker_key,
        broker_cert,
        [ca_cert],
        serialization.BestAvailableEncryption(keystore_password.encode()),
    )
    return ca_cert.public_bytes(serialization.Encoding.PEM), keystore


def _write_private(path: Path, content: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
