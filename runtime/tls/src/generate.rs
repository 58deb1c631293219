//! Making a cluster's credentials: a CA, and one certificate per role signed by it.
//!
//! ```text
//! DIR/ca/cert.pem, DIR/ca/key.pem          the CA (keep its key off the cluster's machines)
//! DIR/ca/name                              its name, unique to the cluster
//! DIR/<role>/{ca.pem,cert.pem,key.pem}     for role in broker, worker, client, admin
//! ```

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose,
};

use crate::Role;

/// How long a certificate is valid, from when.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Seconds since the Unix epoch.
    pub from: i64,
    pub days: u32,
}

impl Validity {
    /// From now, for `days`.
    pub fn days(days: u32) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        // A little slack for clocks a few minutes apart.
        Self { from: now - 3600, days }
    }

    fn apply(self, params: &mut CertificateParams) -> Result<(), GenerateError> {
        let at = |secs: i64| {
            time::OffsetDateTime::from_unix_timestamp(secs)
                .map_err(|_| GenerateError::Other(format!("a date {secs} s from 1970 is out of range")))
        };
        params.not_before = at(self.from)?;
        params.not_after = at(self.from + i64::from(self.days) * 86_400)?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Other(String),
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), GenerateError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| GenerateError::Io { path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(io)
}

fn ca_params(name: &str, validity: Validity) -> Result<CertificateParams, GenerateError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity.apply(&mut params)?;
    Ok(params)
}

fn leaf(
    role: Role,
    validity: Validity,
    ca: &Certificate,
    ca_key: &KeyPair,
) -> Result<(String, String), GenerateError> {
    let mut params = CertificateParams::new(vec![role.host().to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, format!("maelstrom {role}"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if role == Role::Broker {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params)?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Makes a new cluster's credentials in `dir` (which must not hold any yet): the CA, and a
/// credential for each role, valid for `validity`.
pub fn cluster(dir: &Path, validity: Validity) -> Result<(), GenerateError> {
    if dir.join("ca").exists() {
        return Err(GenerateError::Other(format!(
            "{} already holds a cluster's credentials; pick another directory",
            dir.display()
        )));
    }
    let ca_key = KeyPair::generate()?;
    // Unique, so another cluster's certificates are told apart by their issuer's name.
    let name = format!("maelstrom cluster CA {}", &hex(ca_key.public_key_raw())[..16]);
    let ca = ca_params(&name, validity)?.self_signed(&ca_key)?;
    write(&dir.join("ca/name"), &name, false)?;
    write(&dir.join("ca/cert.pem"), &ca.pem(), false)?;
    write(&dir.join("ca/key.pem"), &ca_key.serialize_pem(), true)?;
    for role in Role::ALL {
        issue_with(&ca, &ca_key, role, &dir.join(role.name()), validity)?;
    }
    Ok(())
}

fn issue_with(
    ca: &Certificate,
    ca_key: &KeyPair,
    role: Role,
    out: &Path,
    validity: Validity,
) -> Result<(), GenerateError> {
    let (cert, key) = leaf(role, validity, ca, ca_key)?;
    write(&out.join("ca.pem"), &ca.pem(), false)?;
    write(&out.join("cert.pem"), &cert, false)?;
    write(&out.join("key.pem"), &key, true)
}

/// Issues one more credential for `role` into `out`, from the CA in `ca_dir` (a cluster's
/// `ca` directory), valid for `validity`.
pub fn issue(ca_dir: &Path, role: Role, out: &Path, validity: Validity) -> Result<(), GenerateError> {
    let read = |name: &str| {
        let path = ca_dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| GenerateError::Io { path, source })
    };
    let ca_key = KeyPair::from_pem(&read("key.pem")?)?;
    // The CA's name and key are what sign; its certificate on disk stays the one peers trust.
    let ca = ca_params(read("name")?.trim(), Validity::days(1))?.self_signed(&ca_key)?;
    let (cert, key) = leaf(role, validity, &ca, &ca_key)?;
    write(&out.join("ca.pem"), &read("cert.pem")?, false)?;
    write(&out.join("cert.pem"), &cert, false)?;
    write(&out.join("key.pem"), &key, true)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
