"""A tiny OTLP/gRPC trace sink for the benchmark: accepts
``opentelemetry.proto.collector.trace.v1.TraceService/Export`` on a free loopback port,
counts the spans and drops them. Prints ``otlp sink listening on PORT`` first, and the
count of spans received when it is stopped (SIGTERM/SIGINT).

    python otlp_sink.py  # needs grpcio and opentelemetry-proto (run.sh installs them)
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0

    def Export(self, request, context):  # the RPC's name
        count = sum(
            len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
        )
        with self.lock:
            self.spans += count
        return trace_service_pb2.ExportTraceServiceResponse()


def main() -> None:
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"otlp sink listening on {port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()
    print(f"otlp sink received {sink.spans} spans", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
