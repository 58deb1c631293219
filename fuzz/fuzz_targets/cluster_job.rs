//! A job frame's payload (`Submit` or `Start`), read in place: whatever validates must be
//! safe to walk, and must survive the trip into an owned job and back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maelstrom_wire::cluster::{Frame, JobSpec, Kind, decode, encode_job};
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let mut buf = AlignedVec::<16>::with_capacity(data.len());
    buf.extend_from_slice(data);
    if let Ok(Frame::Job { spec, .. }) = decode(Kind::Submit, &buf) {
        let owned = rkyv::deserialize::<JobSpec, rkyv::rancor::Error>(spec).expect("a validated job deserializes");
        let again = encode_job(&owned);
        let reread = rkyv::access::<maelstrom_wire::cluster::ArchivedJobSpec, rkyv::rancor::Error>(&again)
            .expect("a re-encoded job validates");
        assert_eq!(reread, &owned);
    }
});
