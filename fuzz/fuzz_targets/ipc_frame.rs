//! Fuzzes the IPC decoders: the bus frame reader (length-prefixed postcard frames), postcard
//! decoding of every message type that crosses a process boundary (bus frames both ways,
//! control messages both ways), and the adapter wire peeks on published payloads. Never panic;
//! whatever decodes encodes again and reads back the same through a `FrameReader`.

#![no_main]

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sio_cluster::fuzz_api::{
    BusDown, BusUp, FrameReader, MAX_FRAME, ToPrimary, ToWorker, encode, peek_adapter_ack_timeout,
    peek_adapter_request, peek_adapter_response,
};

/// Frames declaring more than this are cut from the stream before the reader sees them: the
/// reader allocates a declared length (up to `MAX_FRAME`) before reading, which is fine on the
/// trusted bus but would make every such input cost 128 MiB here.
const BIG: usize = 64 * 1024;

/// Runs a future that never waits (it only reads from memory) to completion.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("reading from a byte slice never waits");
}

/// Checks that a decoded value encodes as a frame that reads back the same.
fn round_trip<T>(v: &T)
where
    T: Serialize + DeserializeOwned + Debug,
{
    let frame = encode(v).expect("a decoded value encodes");
    let back: Option<T> = run(async {
        let mut r = FrameReader::new(&frame[..]);
        r.next::<T>().await.expect("its own frame decodes")
    });
    assert_eq!(format!("{:?}", back), format!("{:?}", Some(v)));
}

/// Decodes `body` as every message type and peeks adapter payloads.
fn decode_all(body: &[u8]) {
    if let Ok(m) = postcard::from_bytes::<BusUp>(body) {
        let frame = encode(&m).expect("a decoded BusUp encodes");
        assert_eq!(postcard::from_bytes::<BusUp>(&frame[4..]).map(|b| format!("{b:?}")), Ok(format!("{m:?}")));
        if let BusUp::Publish { payload, .. } = &m {
            peek(payload);
        }
    }
    if let Ok(m) = postcard::from_bytes::<BusDown>(body) {
        let frame = encode(&m).expect("a decoded BusDown encodes");
        assert_eq!(postcard::from_bytes::<BusDown>(&frame[4..]).map(|b| format!("{b:?}")), Ok(format!("{m:?}")));
        if let BusDown::Deliver { payload, .. } = &m {
            peek(payload);
        }
    }
    if let Ok(m) = postcard::from_bytes::<ToWorker>(body) {
        round_trip(&m);
    }
    if let Ok(m) = postcard::from_bytes::<ToPrimary>(body) {
        round_trip(&m);
    }
}

/// The adapter wire peeks, as the IPC driver runs them on every published payload.
fn peek(payload: &[u8]) {
    if let Some((_, _, kind, expects)) = peek_adapter_request(payload) {
        if expects {
            let _ = peek_adapter_ack_timeout(payload);
        }
        let _ = kind;
    }
    let _ = peek_adapter_response(payload);
}

/// `data` up to the first frame whose declared length is over [`BIG`] (but not over
/// `MAX_FRAME`, which the reader refuses before allocating).
fn cut_big_frames(data: &[u8]) -> &[u8] {
    let mut at = 0;
    while let Some(len) = data.get(at..at + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > BIG && len <= MAX_FRAME {
            return &data[..at];
        }
        at = at.saturating_add(4).saturating_add(len);
    }
    data
}

fuzz_target!(|data: &[u8]| {
    decode_all(data);
    peek(data);
    let stream = cut_big_frames(data);
    run(async {
        let mut r = FrameReader::new(stream);
        let mut frames = 0usize;
        while let Ok(Some(body)) = r.next_raw().await {
            assert!(body.len() <= stream.len());
            decode_all(body);
            frames += 1;
        }
        assert!(frames <= stream.len() / 4);
        // The typed reader agrees on the first frame.
        let mut r = FrameReader::new(stream);
        let _ = r.next::<BusDown>().await;
    });
});
