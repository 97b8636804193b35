"""Shared fixtures. Kernel tests skip on machines that cannot trace, except in CI
(WHYPROBE_REQUIRE_BPF=1), where a skip is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from testkit import cannot_run

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel has no BTF"
    if not list((ROOT / "src/whyprobe/bpf").glob("*.bpf.o")):
        return "BPF objects not built (run make bpf)"
    return None


@pytest.fixture
def bpf_required() -> None:
    reason = _bpf_unavailable_reason()
    if reason is not None:
        cannot_run(f"kernel test: {reason}")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def as_nobody():
    """Wrap an argv to run as user nobody (when we are root).

    The checkout may sit under a root-only directory (CI clones into a private
    temp dir), where nobody could not import the package: give "others" search
    permission on the ancestors that lack it, for this session only."""
    import shutil
    import stat

    if os.geteuid() != 0:
        yield lambda argv: list(argv)
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) missing")
    changed = []
    for d in [ROOT, *ROOT.parents]:
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            d.chmod(mode | stat.S_IXOTH)
            changed.append((d, mode))
    try:
        yield lambda argv: [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", *argv]
    finally:
        for d, mode in changed:
            d.chmod(stat.S_IMODE(mode))


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    """(cert.pem, key.pem): a self-signed certificate for 127.0.0.1, shared by the TLS tests."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"
