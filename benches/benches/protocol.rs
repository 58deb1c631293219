//! Criterion bench of the cluster protocol's hot path: encoding a typical job message (as a
//! client does for every job) and validating it in place (as the broker and workers do), beside
//! a small control message (a job's result).

use criterion::{Criterion, black_box};
use maelstrom_wire::cluster::{
    self, Control, Frame, HEADER_BYTES, Kind, Outcome, Output, Usage, decode, encode_job_frame,
    encode_job_into, typical_job,
};
use rkyv::util::AlignedVec;

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("protocol");
    let job = typical_job();
    let mut encoded = AlignedVec::new();
    let mut frame = Vec::new();
    group.bench_function("encode_job", |b| {
        b.iter(|| {
            encode_job_into(black_box(&job), &mut encoded);
            frame.clear();
            encode_job_frame(Kind::Submit, 7, &encoded, &mut frame).expect("a typical job fits");
            frame.len()
        });
    });
    let mut payload = AlignedVec::<16>::new();
    payload.extend_from_slice(&frame[HEADER_BYTES..]);
    group.bench_function("validate_job", |b| {
        b.iter(|| match decode(Kind::Submit, black_box(&payload)) {
            Ok(Frame::Job { spec, .. }) => spec.layers.len(),
            _ => unreachable!("a valid job"),
        });
    });
    let mut received = AlignedVec::<16>::new();
    group.bench_function("encode_and_validate_job", |b| {
        b.iter(|| {
            encode_job_into(black_box(&job), &mut encoded);
            frame.clear();
            encode_job_frame(Kind::Submit, 7, &encoded, &mut frame).expect("a typical job fits");
            received.clear();
            received.extend_from_slice(&frame[HEADER_BYTES..]);
            match decode(Kind::Submit, &received) {
                Ok(Frame::Job { spec, .. }) => spec.layers.len(),
                _ => unreachable!("a valid job"),
            }
        });
    });
    let done = Control::Done {
        id: 42,
        outcome: Outcome::Exited {
            code: 0,
            stdout: Output { bytes: b"test tests::parses_the_config_file ... ok\n".to_vec(), cut: 0 },
            stderr: Output::default(),
            duration_us: 1234,
            met: Vec::new(),
            usage: Usage { cpu_us: 987, peak_rss_bytes: 3 << 20 },
        },
    };
    let mut control = Vec::new();
    group.bench_function("encode_and_validate_result", |b| {
        b.iter(|| {
            control.clear();
            cluster::encode_control(black_box(&done), &mut control).expect("a small result fits");
            received.clear();
            received.extend_from_slice(&control[HEADER_BYTES..]);
            matches!(decode(Kind::Control, &received), Ok(Frame::Control(_)))
        });
    });
    group.finish();
    criterion.final_summary();
}
