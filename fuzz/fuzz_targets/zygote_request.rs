//! The lane's decoder of spawn requests: arbitrary bytes must never panic, and whatever
//! validates must be safe to walk (every string terminated, every op printable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use maelstrom_wire::zygote::decode_request;
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let mut buf = AlignedVec::<16>::with_capacity(data.len());
    buf.extend_from_slice(data);
    if let Ok(request) = decode_request(&buf) {
        for op in request.template.iter().chain(request.job.iter()) {
            let _ = op.to_string();
        }
        for s in request.program.iter().chain(request.arguments.iter()).chain(request.environment.iter()) {
            assert!(s.is_valid() && !s.as_bytes().contains(&0));
        }
        assert!(request.hostname.is_valid() && request.working_directory.is_valid());
    }
});
