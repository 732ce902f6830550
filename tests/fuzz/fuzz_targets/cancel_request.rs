#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| reins_server::fuzzing::cancel_request(bytes));
