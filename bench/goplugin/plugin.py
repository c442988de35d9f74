"""The Python side of the benchmark's hashicorp/go-plugin peer.

A gRPC server speaking go-plugin's protocol with nothing but grpcio (Debian's
python3-grpcio): no protoc, no generated code. Every method is a generic
handler on raw bytes, so the messages go-plugin itself exchanges are
hand-encoded here, and the benchmark's own methods carry JSON (typed calls)
or raw bytes (echo). It calls the same plugin functions the other harnesses
call.

usage: python3 plugin.py PLUGIN_DIR MODULE   (started by go-plugin, which
sets the magic cookie and reads the handshake line from stdout)
"""

import importlib
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

# Must match the HandshakeConfig in main.go. go-plugin's own servers refuse
# to run without the cookie, so that a plugin started by hand says what it
# is instead of waiting for a client that never comes.
COOKIE_KEY = "FIDIUS_BENCH_GOPLUGIN"
COOKIE_VALUE = "2f6c1c1e-fidius-bench"
PROTOCOL_VERSION = 1  # the application protocol; go-plugin's core one is 1 too

# 1 MiB echoes plus framing must fit; grpc's default receive limit is 4 MiB,
# set both ways anyway so a larger echo row fails loudly on neither side.
MAX_MESSAGE = 16 << 20

# HealthCheckResponse{status: SERVING}: field 1, varint, value 1.
SERVING = b"\x08\x01"


def main():
    if os.environ.get(COOKIE_KEY) != COOKIE_VALUE:
        sys.stderr.write(
            "This is a go-plugin plugin for the fidius benchmark: "
            "it is started by bench/goplugin, not by hand.\n"
        )
        sys.exit(1)
    sys.path.insert(0, sys.argv[1])
    plugin = importlib.import_module(sys.argv[2])

    # The host calls one method at a time per process; a few threads leave
    # room for go-plugin's own calls (health, stdio, shutdown) beside it.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
        ],
    )

    # A None (de)serializer hands the handler the request's bytes as they
    # came and sends the bytes it returns as they are: identity, no protobuf.
    def unary(fn):
        return grpc.unary_unary_rpc_method_handler(fn)

    def typed(fn):
        def handle(request, context):
            args = json.loads(request) if request else ()
            return json.dumps(fn(*args)).encode()

        return unary(handle)

    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "fidius.bench.Bench",
                {
                    "noop": typed(plugin.noop),
                    "greet": typed(plugin.greet),
                    "crunch": typed(plugin.crunch),
                    "echo": unary(lambda request, context: plugin.echo(request)),
                },
            ),
            # go-plugin's client pings this (Client.Ping) with service "plugin".
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": unary(health_check)}
            ),
            # go-plugin's client opens this stream at once and copies what it
            # carries to its SyncStdout/SyncStderr. This plugin writes nothing
            # to forward (its stderr reaches the host directly), so the stream
            # ends at once, which the client takes as a plain EOF; left
            # unimplemented, the client would log a warning on every start.
            grpc.method_handlers_generic_handler(
                "plugin.GRPCStdio",
                {"StreamStdio": grpc.unary_stream_rpc_method_handler(lambda request, context: iter(()))},
            ),
            # Kill calls this first and then waits up to 2 s for the process
            # to end before killing it: answering and stopping makes Kill
            # prompt and the exit clean. (GRPCBroker is not served: the
            # client's broker stream then ends with Unimplemented, silently,
            # and nothing here needs brokered connections.)
            grpc.method_handlers_generic_handler(
                "plugin.GRPCController",
                {"Shutdown": unary(lambda request, context: shutdown(server))},
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    threading.Thread(target=orphan_watch, daemon=True).start()

    # go-plugin's handshake: core protocol | app protocol | network | address | protocol.
    sys.stdout.write(f"1|{PROTOCOL_VERSION}|tcp|127.0.0.1:{port}|grpc\n")
    sys.stdout.flush()
    server.wait_for_termination()


def health_check(request, context):
    # HealthCheckRequest{service}: empty, or field 1 (tag 0x0a), a one-byte
    # length (names here are short), the name.
    service = request[2 : 2 + request[1]].decode() if len(request) >= 2 and request[0] == 0x0A else ""
    if service not in ("", "plugin"):
        context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
    return SERVING


def shutdown(server):
    # stop() returns at once; the grace lets this call's answer go out
    # before the server ends and wait_for_termination returns in main.
    server.stop(grace=1)
    return b""  # plugin.Empty


def orphan_watch():
    # If the host dies without Kill (a crash, SIGKILL), nothing would ever
    # stop this server: end with it, so no plugin process outlives a bench.
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


if __name__ == "__main__":
    main()
