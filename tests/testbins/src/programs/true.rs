// A static program that does nothing: the smallest job there is, for startup benchmarks.
#![no_std]
#![no_main]

#[link(name = "c")]
#[link(name = "gcc")]
#[link(name = "gcc_eh")]
extern "C" {}

#[no_mangle]
pub extern "C" fn main() -> i32 {
    0
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
