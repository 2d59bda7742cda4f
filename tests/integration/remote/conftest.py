"""Fixtures of the remote-device tests: a real sshd, network-namespace agents and tiny real artifacts."""

from tests.fixtures.agent import tiny_pte, tiny_tflite, tiny_tflite_model  # noqa: F401
from tests.fixtures.netns import *  # noqa: F403
from tests.fixtures.sshd import *  # noqa: F403
