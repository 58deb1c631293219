//! A control message's payload: whatever validates deserializes, and re-encodes to a message
//! that validates to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maelstrom_wire::cluster::{Control, Frame, HEADER_BYTES, Kind, decode, encode_control};
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let mut buf = AlignedVec::<16>::with_capacity(data.len());
    buf.extend_from_slice(data);
    if let Ok(Frame::Control(control)) = decode(Kind::Control, &buf) {
        let owned = rkyv::deserialize::<Control, rkyv::rancor::Error>(control).expect("a validated message deserializes");
        let mut frame = Vec::new();
        // What validated as one frame re-encodes within the limit.
        encode_control(&owned, &mut frame).expect("a validated message re-encodes");
        let mut again = AlignedVec::<16>::new();
        again.extend_from_slice(&frame[HEADER_BYTES..]);
        match decode(Kind::Control, &again) {
            Ok(Frame::Control(reread)) => assert_eq!(reread, &owned),
            other => panic!("a re-encoded message did not validate: {other:?}"),
        }
    }
});
