"""Bearer-token check for every RPC (except the health check), and TLS server credentials."""

from __future__ import annotations

import hmac

import grpc

from device_agent.config import TlsConfig

UNAUTHENTICATED_OK = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


class TokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in UNAUTHENTICATED_OK:
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        return _deny(handler, "missing or wrong bearer token: pass the agent's token (authorization: Bearer ...)")


def _deny(handler, message: str):
    def abort(_request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS credentials; with a client CA, client certificates are required (mTLS)."""
    key = tls.key.read_bytes()
    cert = tls.cert.read_bytes()
    if tls.client_ca is not None:
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=tls.client_ca.read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])
