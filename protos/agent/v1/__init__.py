"""sculpt.agent.v1: the device agent protocol."""

from protos.agent.v1 import agent_pb2, agent_pb2_grpc

PROTOCOL_VERSION = agent_pb2.PROTOCOL_VERSION_CURRENT

__all__ = ["PROTOCOL_VERSION", "agent_pb2", "agent_pb2_grpc"]
