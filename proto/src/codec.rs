//! The codec of the generated servers: prost's, with a send buffer sized for a watch
//! event rather than tonic's default 8 KiB.
//!
//! Each response stream keeps its send buffer while it is open, and a message is written
//! into what is left of it before a new one is allocated. With 10,000 or 100,000 open
//! watches the buffers are most of a replica's memory: at 8 KiB a watcher costs ~9 kB.
//! A smaller buffer grows as a large message needs (a task with a big result), so only
//! the memory held at rest changes.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes a response stream allocates for its messages at a time: room for a typical task
/// event and its 5-byte gRPC frame header, within glibc's per-thread cache (≤ 1,032 B).
const SEND_BUFFER: usize = 1024;
/// How many encoded bytes a stream collects before handing them to HTTP/2 (tonic's
/// default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `application/grpc+proto` with prost, as `tonic_prost::ProstCodec`, with
/// [`SEND_BUFFER`].
#[derive(Debug)]
pub struct ServerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        ServerCodec(PhantomData)
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::new(BufferSettings::new(SEND_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> ProstDecoder<U> {
        ProstDecoder::default()
    }
}
