//! gRPC calls with raw request bytes, for what a typed client cannot send: garbage,
//! invalid UTF-8 in a string field, a message the server's decoder must refuse.

use std::str::FromStr;

use bytes::{Buf, BufMut};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

/// A codec that sends and receives message bodies as they are.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// How a method is called, for [`raw_call`].
#[derive(Clone, Copy, Debug)]
pub enum Shape {
    Unary,
    ServerStreaming,
    BidiStreaming,
}

/// Calls `path` (e.g. `/reins.v1.TaskService/CheckTask`) at `url` with `body` as the one
/// request message; `Ok` with the first response message, or the call's status.
pub async fn raw_call(
    url: &str,
    path: &str,
    shape: Shape,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let channel = Channel::from_shared(url.to_owned())
        .expect("a valid url")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("the channel is ready");
    let path = PathAndQuery::from_str(path).expect("a valid path");
    match shape {
        Shape::Unary => Ok(grpc
            .unary(tonic::Request::new(body), path, RawCodec)
            .await?
            .into_inner()),
        Shape::ServerStreaming => {
            let mut stream = grpc
                .server_streaming(tonic::Request::new(body), path, RawCodec)
                .await?
                .into_inner();
            Ok(stream.message().await?.unwrap_or_default())
        }
        Shape::BidiStreaming => {
            let requests = tokio_stream::iter([body]);
            let mut stream = grpc
                .streaming(tonic::Request::new(requests), path, RawCodec)
                .await?
                .into_inner();
            // The first reply, or the status the server ended the stream with.
            stream.message().await?.ok_or_else(|| Status::ok("ended"))
        }
    }
}
