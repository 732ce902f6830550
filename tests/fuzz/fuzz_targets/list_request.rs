#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| reins_server::fuzzing::list_request(bytes));
