"""Calls a banger service with Debian's python3-grpcio (the C-core gRPC), with no
generated stubs: raw protobuf bytes. Prints one JSON object for the test to check.

usage: grpcio_client.py SOCKET
"""
import json
import sys

import grpc


def raw(channel, method):
    return channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def main(socket):
    out = {}
    with grpc.insecure_channel("unix:" + socket) as channel:
        body, call = raw(channel, "/banger.v1.SystemService/GetStatus").with_call(b"", timeout=10)
        out["status_bytes"] = len(body)
        out["status_names"] = [n for n in ("orchestrator", "privileged", "image-puller") if n.encode() in body]
        out["header_op_id"] = dict(call.initial_metadata()).get("banger-op-id")

        try:
            # GetVmRequest{name: "nope"}: field 1, length 4.
            raw(channel, "/banger.v1.VmService/GetVm").with_call(b"\x0a\x04nope", timeout=10)
            out["error"] = None
        except grpc.RpcError as error:
            trailers = dict(error.trailing_metadata())
            out["error"] = {
                "code": error.code().name,
                "details": error.details(),
                "trailer_op_id": trailers.get("banger-op-id"),
                "has_status_details": "grpc-status-details-bin" in trailers,
            }

        # ServerReflectionRequest{list_services: ""} is field 7, length 0.
        reflect = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        responses = list(reflect(iter([b"\x3a\x00"]), timeout=10))
        out["reflection_lists_system_service"] = any(b"banger.v1.SystemService" in r for r in responses)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
