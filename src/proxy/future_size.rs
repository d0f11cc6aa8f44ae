//! Tests that the request path's future stays small: hyper moves each request's future into
//! place, so every byte of the largest state (a miss with its origin fetch, a pass) would be
//! copied on every hit too. The fetch and the pass are boxed, and `Client` is kept small.

use std::future::Future;

use super::*;

/// The size of the future `f` returns, without calling it.
fn future_size<A, B, C, F: Future>(_f: fn(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}

#[test]
fn a_request_future_holds_no_fetch_state() {
    let handle = future_size(Proxy::handle as fn(Arc<Proxy>, Request<Incoming>, Client) -> _);
    // 10 KiB in a debug build before the fetch and the pass were boxed and the SNI name was
    // shared; about 3 KiB after.
    assert!(handle <= 4096, "Proxy::handle's future is {handle} bytes");
    assert!(
        std::mem::size_of::<Client>() <= 96,
        "Client is {} bytes",
        std::mem::size_of::<Client>()
    );
}
