//! The worker's decoders of lane replies and hellos: arbitrary bytes must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maelstrom_wire::zygote::{decode_hello, decode_reply};
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let mut buf = AlignedVec::<16>::with_capacity(data.len());
    buf.extend_from_slice(data);
    let _ = decode_reply(&buf).map(|r| format!("{r:?}"));
    let _ = decode_hello(&buf).map(|h| format!("{h:?}"));
});
