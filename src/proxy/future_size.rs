//! Tests that what a request hands hyper stays small: hyper moves each request's future into
//! place, so every byte of the largest state (a miss with its origin fetch, a pass) would be
//! copied on every hit too. A hit is answered before the future exists (`Proxy::handle`), the
//! fetch and the pass are boxed, and `Client` is kept small.

use super::*;

#[test]
fn a_request_future_holds_no_fetch_state() {
    // 10 KiB in a debug build before the fetch and the pass were boxed and the SNI name was
    // shared, about 3 KiB after; now a ready answer or a box.
    let handling = std::mem::size_of::<front::Handling>();
    assert!(
        handling <= 256,
        "Proxy::handle's future is {handling} bytes"
    );
    assert!(
        std::mem::size_of::<Client>() <= 96,
        "Client is {} bytes",
        std::mem::size_of::<Client>()
    );
}
