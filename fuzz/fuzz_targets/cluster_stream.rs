//! A peer's byte stream, as the broker, a worker or a client reads it: frames reassembled from
//! arbitrary pieces, each validated. Nothing may panic, and nothing the reader holds may grow
//! past one frame's limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use maelstrom_wire::cluster::{FRAME_PAYLOAD_BYTES_MAX, Frame, FrameReader, decode};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut reader = FrameReader::default();
    for piece in [&data[..split], &data[split..]] {
        let fed = reader.feed(piece, &mut |kind, payload| {
            assert!(payload.len() <= FRAME_PAYLOAD_BYTES_MAX);
            match decode(kind, payload) {
                Ok(Frame::Control(control)) => {
                    let _ = rkyv::deserialize::<maelstrom_wire::cluster::Control, rkyv::rancor::Error>(control);
                }
                Ok(Frame::Job { spec, bytes, .. }) => {
                    assert!(!spec.program.is_empty() && !spec.layers.is_empty() && bytes.len() < payload.len());
                }
                Ok(Frame::Chunk { header, data }) => {
                    assert!(header.offset + data.len() as u64 <= header.total);
                }
                Err(_) => {}
            }
            true
        });
        if fed.is_err() {
            return;
        }
    }
});
