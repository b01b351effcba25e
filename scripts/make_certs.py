#!/usr/bin/env python3
"""Makes a test PKI for the fleet broker: a CA, a broker certificate, and one client certificate per identity.

    scripts/make_certs.py OUT_DIR [--inventory INVENTORY [--prefix 'edge/{fleet}/']] [--device cam-01 ...]
                                  [--operator alice ...] [--expired old-01] [--other-ca] [--host broker.lan]

Writes into OUT_DIR (PEM, keys mode 0600):
    ca.crt, ca.key                  the fleet CA (give ca.crt to devices as tls.ca_file, and to Mosquitto as cafile)
    broker.crt, broker.key          the broker, valid for localhost, 127.0.0.1, ::1 and every --host
    {name}.crt, {name}.key          a client certificate per identity, CN = its name (use_identity_as_username): every
                                    device, operator and repository user of the inventory, every --device and
                                    every --operator
    edge-fleet.acl                  with --inventory: the broker's ACL rendered from it (scripts/make_acl.py)
    {name}.crt, {name}.key          for every --expired NAME: a client certificate that expired yesterday
    other-ca.crt, other-ca.key      with --other-ca: an unrelated CA (a device trusting it must refuse the broker)
    stranger.crt, stranger.key      with --other-ca: a client certificate signed by that unrelated CA

Keys are ECDSA P-256. This is for test benches and first trials; a production fleet's CA key belongs offline.
A name in --device or --operator that is not in the inventory gets a certificate but no rights in the ACL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edge-agent test fleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(folder: Path, stem: str, cert: x509.Certificate, key: Key) -> None:
    (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created 0600 from the start: the key is never readable by others, not even for a moment.
    fd = os.open(folder / f"{stem}.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def make_ca(common_name: str, days: int) -> tuple[x509.Certificate, Key]:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(
    common_name: str,
    ca: tuple[x509.Certificate, Key],
    *,
    server: bool,
    validity: tuple[dt.datetime, dt.datetime],
    hosts: list[str] | None = None,
) -> tuple[x509.Certificate, Key]:
    """A certificate signed by `ca`: a server certificate for `hosts`, or a client certificate."""
    ca_cert, ca_key = ca
    not_before, not_after = validity
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts or []:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_certs(
    folder: Path,
    devices: list[str],
    *,
    expired: list[str] | None = None,
    other_ca: bool = False,
    hosts: list[str] | None = None,
    days: int = 30,
) -> None:
    """Writes the CA, the broker certificate and the client certificates into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    valid = (now - dt.timedelta(hours=1), now + dt.timedelta(days=days))
    ca = make_ca("edge-agent test CA", days)
    _write(folder, "ca", *ca)
    broker_hosts = ["localhost", "127.0.0.1", "::1", *(hosts or [])]
    _write(folder, "broker", *make_leaf("broker", ca, server=True, hosts=broker_hosts, validity=valid))
    for device in devices:
        _write(folder, device, *make_leaf(device, ca, server=False, validity=valid))
    for name in expired or []:
        past = (now - dt.timedelta(days=30), now - dt.timedelta(days=1))
        _write(folder, name, *make_leaf(name, ca, server=False, validity=past))
    if other_ca:
        other = make_ca("unrelated CA", days)
        _write(folder, "other-ca", *other)
        _write(folder, "stranger", *make_leaf("stranger", other, server=False, validity=valid))


RESERVED = {"ca", "broker", "other-ca", "stranger"}
"""File stems of the CA, broker and --other-ca files: no client may be named so."""


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the PEM files into (created if missing)")
    parser.add_argument(
        "--inventory",
        type=Path,
        help="fleet inventory (TOML): a client certificate for each of its identities, and edge-fleet.acl",
    )
    parser.add_argument(
        "--prefix",
        default="edge/{fleet}/",
        help="topic prefix template for the ACL (default 'edge/{fleet}/')",
    )
    parser.add_argument(
        "--device", action="append", default=[], help="device id: a client certificate, CN = id"
    )
    parser.add_argument(
        "--operator", action="append", default=[], help="operator name: a client certificate, CN = name"
    )
    parser.add_argument(
        "--expired", action="append", default=[], help="name of an already expired client cert"
    )
    parser.add_argument(
        "--other-ca", action="store_true", help="also an unrelated CA and a client cert it signed"
    )
    parser.add_argument("--host", action="append", default=[], help="extra broker host name or address")
    parser.add_argument(
        "--days", type=int, default=30, help="validity of the certificates, days (default 30)"
    )
    args = parser.parse_args(argv)
    acl: str | None = None
    names = [*args.device, *args.operator]
    if args.inventory is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_acl import InventoryError, parse_inventory, render_acl

        try:
            inventory = parse_inventory(args.inventory.read_text(encoding="utf-8"), str(args.inventory))
            acl = render_acl(inventory, args.prefix, source=str(args.inventory))
        except (OSError, InventoryError) as problem:
            for line in str(problem).splitlines():
                print(f"make_certs: error: {line}", file=sys.stderr)
            return 1
        names = [*inventory.identities(), *names]
    clash = sorted(RESERVED & {*names, *args.expired})
    if clash:
        parser.error(f"{', '.join(clash)}: reserved for the CA and broker files; choose another name")
    make_certs(
        args.out_dir,
        list(dict.fromkeys(names)),
        expired=args.expired,
        other_ca=args.other_ca,
        hosts=args.host,
        days=args.days,
    )
    if acl is not None:
        from make_acl import write_acl

        write_acl(args.out_dir / "edge-fleet.acl", acl)
        print(f"ACL for {args.inventory} written to {args.out_dir / 'edge-fleet.acl'}")
    print(f"certificates written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
