from protos.agent.v1 import PROTOCOL_VERSION, agent_pb2, agent_pb2_grpc


def test_protocol_version_is_v1():
    assert PROTOCOL_VERSION == 1
    assert agent_pb2.DESCRIPTOR.package == "sculpt.agent.v1"


def test_service_has_the_agreed_methods():
    service = agent_pb2.DESCRIPTOR.services_by_name["Agent"]
    assert {m.name for m in service.methods} >= {"GetInfo", "HasArtifact", "UploadArtifact", "Benchmark"}
    assert hasattr(agent_pb2_grpc, "AgentStub") and hasattr(agent_pb2_grpc, "add_AgentServicer_to_server")


def test_generated_stubs_are_fresh():
    from protos import generate

    assert generate.main(["--check"]) == 0
