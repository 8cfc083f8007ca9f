"""Who signs: a certificate chain and its private key, the user's own or a local one made on first use.

c2pa (c2pa-rs 0.91, checked by trying) signs only with an end-entity certificate that is
- issued by another certificate (a lone self-signed certificate is refused) and carries an
  Authority Key Identifier,
- not a CA (BasicConstraints ca=False), with the digitalSignature key usage,
- with an extended key usage it allows: emailProtection or timeStamping (serverAuth, anyEKU,
  documentSigning, c2pa's claimSigning OID and no EKU at all are refused),
- valid now (not before its start, not after its end).
The local identity is a root CA and such an end-entity certificate (ECDSA P-256, ES256), in the
user's config folder. No trust list holds that root, so verifiers show its pictures as signed by
an untrusted signer: the signature proves the picture is unchanged, not who made it.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import UserError
from .output import write

LOCAL_ORGANIZATION = "noisecraft local identity"  # the O= of every local certificate; verify recognises it
ROOT_YEARS, SIGNER_DAYS, RENEW_DAYS = 20, 730, 14  # a signer certificate is renewed 14 days before it ends
FILES = ("root.pem", "root.key", "signer.pem", "signer.key")
_CURVES = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}


@dataclass(frozen=True)
class Identity:
    """A certificate chain (PEM, end-entity first) and its private key (PEM, unencrypted).

    `algorithm` is c2pa's name for the signature (es256, es384, es512, ps256, ed25519); `name` the
    signer's common name; `self_signed` is True for noisecraft's local identity (a root made on this
    computer, in no trust list). The key is left out of `repr`.
    """

    cert_chain_pem: bytes
    private_key_pem: bytes = field(repr=False)
    algorithm: str
    name: str
    self_signed: bool


def config_folder() -> Path:
    """noisecraft's config folder: $XDG_CONFIG_HOME/noisecraft, else ~/.config/noisecraft."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "noisecraft"


def load_identity(cert_path: str | os.PathLike, key_path: str | os.PathLike) -> Identity:
    """The user's own certificate chain (PEM, end-entity first) and private key (PEM); a missing,
    unreadable, encrypted or mismatched file is a one-sentence `UserError`."""
    chain_pem = _read(cert_path, "certificate")
    key_pem = _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise UserError(f"certificate {cert_path} is not a PEM certificate chain; give the signing certificate "
                        "(then its issuers) in PEM form") from None
    key = _load_key(key_pem, key_path)
    if _public(key.public_key()) != _public(chain[0].public_key()):
        owner = next((c for c in chain[1:] if _public(c.public_key()) == _public(key.public_key())), None)
        if owner is not None and _is_ca(owner):
            raise UserError(f"key {key_path} is the key of the CA that issued certificate {cert_path}; give the "
                            "signing certificate's own key")
        if owner is not None:
            raise UserError(f"certificate {cert_path} lists other certificates before the signing certificate; put "
                            f"the certificate of key {key_path} first")
        raise UserError(f"key {key_path} does not belong to certificate {cert_path}; give the key the certificate "
                        "was issued for")
    algorithm = _algorithm(key, key_path)
    _check_profile(chain[0], cert_path)
    return Identity(chain_pem, key_pem, algorithm, _common_name(chain[0]), False)


def local_identity(folder: str | os.PathLike | None = None, name: str = "noisecraft local signer") -> Identity:
    """noisecraft's local signing identity, made on first use in `folder` (default:
    `config_folder()/identity`) and reused after; the signer certificate is renewed from the same
    root when it nears its end. Key files are mode 0600, every file is written atomically."""
    folder = Path(folder) if folder is not None else config_folder() / "identity"
    if not all((folder / f).is_file() for f in FILES):
        _create(folder, name)
    try:
        identity = _load_local(folder)
    except (UserError, ValueError):
        identity = None  # a signer pair left mismatched by a crash or a race: issued again below
    if identity is None or _ends_soon(identity):
        _renew(folder)
        identity = _load_local(folder)
    return identity


def root_certificate(folder: str | os.PathLike | None = None) -> bytes:
    """The local identity's root certificate (PEM): give it to a verifier that should trust your pictures."""
    folder = Path(folder) if folder is not None else config_folder() / "identity"
    local_identity(folder)
    return (folder / "root.pem").read_bytes()


# ------------------------------------------------------------------------------------------ reading

def _read(path, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder; give the PEM file") from None
    except OSError as error:
        raise UserError(f"{what} {path} cannot be read ({error.strerror or error}); check its permissions") from None


def _load_key(key_pem: bytes, key_path):
    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise UserError(f"key {key_path} is encrypted; give an unencrypted PEM key "
                        "(openssl pkey -in KEY -out PLAIN)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UserError(f"key {key_path} is not a PEM private key; give the key of the certificate in PEM form") from None


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _algorithm(key, key_path) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _CURVES:
        return _CURVES[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise UserError(f"key {key_path} is of a kind c2pa cannot sign with; use ECDSA P-256/P-384/P-521, RSA or Ed25519")


def _check_profile(cert: x509.Certificate, cert_path) -> None:
    """The checks c2pa makes of a signing certificate, each as one sentence before any picture is made."""
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise UserError(f"certificate {cert_path} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                        f"{cert.not_valid_after_utc:%Y-%m-%d}); renew it")
    if cert.issuer == cert.subject:
        raise UserError(f"certificate {cert_path} is self-signed, which c2pa refuses; sign with a certificate issued "
                        "by a CA (or use the local identity)")
    problems = ["is a CA certificate"] if _is_ca(cert) else []
    usage = _extension(cert, x509.KeyUsage)
    if usage is None or not usage.digital_signature:
        problems.append("lacks the digitalSignature key usage")
    ekus = _extension(cert, x509.ExtendedKeyUsage)
    if ekus is None or not {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.TIME_STAMPING} & set(ekus):
        problems.append("lacks the emailProtection extended key usage")
    if problems:
        raise UserError(f"certificate {cert_path} cannot sign Content Credentials: it {' and '.join(problems)}; "
                        "c2pa needs an end-entity certificate with digitalSignature and emailProtection")


def _is_ca(cert: x509.Certificate) -> bool:
    basic = _extension(cert, x509.BasicConstraints)
    return basic is not None and basic.ca


def _extension(cert, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


# ----------------------------------------------------------------------------------- local identity

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, LOCAL_ORGANIZATION)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _make_root(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(_name(f"{name} root")).issuer_name(_name(f"{name} root"))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=365 * ROOT_YEARS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _make_signer(root: x509.Certificate, root_key, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    end = min(now + dt.timedelta(days=SIGNER_DAYS), root.not_valid_after_utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    return cert, key


def _create(folder: Path, name: str) -> None:
    """Make the four files in a temp folder beside `folder`, then rename it into place: a second
    process racing this one keeps whichever folder arrived first."""
    if all((folder / f).is_file() for f in FILES):
        return  # made meanwhile by another process
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"the identity folder {folder} is incomplete (it needs {', '.join(FILES)}); "
                        "move it away to make a new identity")
    root, root_key = _make_root(name)
    signer, signer_key = _make_signer(root, root_key, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))  # mode 0700
    write(tmp / "root.pem", _pem_cert(root))
    write(tmp / "root.key", _pem_key(root_key), 0o600)
    write(tmp / "signer.pem", _pem_cert(signer) + _pem_cert(root))
    write(tmp / "signer.key", _pem_key(signer_key), 0o600)
    try:
        if folder.exists():
            folder.rmdir()  # an empty folder the user made for it
        os.rename(tmp, folder)
    except OSError:
        if not all((folder / f).is_file() for f in FILES):
            raise
        for file in tmp.iterdir():  # another process made the identity first: keep its files
            file.unlink()
        tmp.rmdir()


def _renew(folder: Path) -> None:
    """A new signer certificate and key from the local root (the key first: a crash between the two
    leaves a mismatch that the next call repairs the same way)."""
    root = x509.load_pem_x509_certificate((folder / "root.pem").read_bytes())
    root_key = serialization.load_pem_private_key((folder / "root.key").read_bytes(), password=None)
    name = _common_name(x509.load_pem_x509_certificates((folder / "signer.pem").read_bytes())[0])
    signer, signer_key = _make_signer(root, root_key, name)
    write(folder / "signer.key", _pem_key(signer_key), 0o600)
    write(folder / "signer.pem", _pem_cert(signer) + _pem_cert(root))


def _load_local(folder: Path) -> Identity:
    identity = load_identity(folder / "signer.pem", folder / "signer.key")
    return Identity(identity.cert_chain_pem, identity.private_key_pem, identity.algorithm, identity.name, True)


def _ends_soon(identity: Identity) -> bool:
    cert = x509.load_pem_x509_certificates(identity.cert_chain_pem)[0]
    return cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < dt.timedelta(days=RENEW_DAYS)
