//! NUL-terminated byte strings that a receiver can hand to the kernel in place.

use std::ffi::{CStr, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// A byte string stored with its terminating NUL, so that the archived form can be passed to a
/// syscall straight from the receive buffer, without a copy.
///
/// Invariant: the bytes end with exactly one NUL and contain no other. [`CBytes::new`] keeps it
/// on the sending side; [`ArchivedCBytes::is_valid`] checks it on the receiving side.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(compare(PartialEq))]
pub struct CBytes(pub(crate) Vec<u8>);

impl CBytes {
    /// Copies `bytes` and appends the NUL. Fails if `bytes` contains a NUL of its own.
    pub fn new(bytes: impl AsRef<[u8]>) -> Result<Self, InteriorNul> {
        let bytes = bytes.as_ref();
        if let Some(offset) = bytes.iter().position(|&b| b == 0) {
            return Err(InteriorNul { text: String::from_utf8_lossy(bytes).into_owned(), offset });
        }
        let mut owned = Vec::with_capacity(bytes.len() + 1);
        owned.extend_from_slice(bytes);
        owned.push(0);
        Ok(Self(owned))
    }

    /// The bytes without the NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..self.0.len() - 1]
    }

    pub fn as_c_str(&self) -> &CStr {
        CStr::from_bytes_with_nul(&self.0).expect("INVARIANT: CBytes holds exactly one NUL, last")
    }

    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(self.as_bytes())
    }
}

impl fmt::Debug for CBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

impl fmt::Display for CBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

impl ArchivedCBytes {
    /// Whether the received bytes keep the invariant: exactly one NUL, at the end.
    pub fn is_valid(&self) -> bool {
        match self.0.as_slice().split_last() {
            Some((0, rest)) => !rest.contains(&0),
            _ => false,
        }
    }

    /// The bytes without the NUL. Only meaningful once [`Self::is_valid`] held.
    pub fn as_bytes(&self) -> &[u8] {
        let all = self.0.as_slice();
        &all[..all.len().saturating_sub(1)]
    }

    /// A pointer to the NUL-terminated string, for a syscall.
    ///
    /// The caller must have checked [`Self::is_valid`]; otherwise the kernel may read past the
    /// end of the buffer.
    pub fn as_ptr(&self) -> *const std::ffi::c_char {
        self.0.as_slice().as_ptr().cast()
    }
}

impl fmt::Debug for ArchivedCBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&String::from_utf8_lossy(self.as_bytes()), f)
    }
}

impl fmt::Display for ArchivedCBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// A string meant for the kernel contained a NUL byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} contains a NUL byte at offset {offset}")]
pub struct InteriorNul {
    pub text: String,
    pub offset: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_appends_exactly_one_nul() {
        let c = CBytes::new("/bin/true").unwrap();
        assert_eq!(c.as_bytes(), b"/bin/true");
        assert_eq!(c.as_c_str().to_bytes(), b"/bin/true");
    }

    #[test]
    fn new_refuses_interior_nul() {
        let err = CBytes::new(b"a\0b").unwrap_err();
        assert_eq!(err.offset, 1);
    }

    #[test]
    fn archived_validity_is_checked() {
        let good = rkyv::to_bytes::<rkyv::rancor::Error>(&CBytes::new("x").unwrap()).unwrap();
        let archived = rkyv::access::<ArchivedCBytes, rkyv::rancor::Error>(&good).unwrap();
        assert!(archived.is_valid());
        assert_eq!(archived.as_bytes(), b"x");

        for bad in [&b""[..], b"x", b"x\0y\0", b"\0\0"] {
            let forged = CBytes(bad.to_vec());
            let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&forged).unwrap();
            let archived = rkyv::access::<ArchivedCBytes, rkyv::rancor::Error>(&bytes).unwrap();
            assert!(!archived.is_valid(), "{bad:?} must not validate");
        }
    }
}
