"""The remote-device tests use the session fixtures registered in tests/conftest.py: a real sshd
(tests.fixtures.sshd), network-namespace agents (tests.fixtures.netns) and tiny real artifacts
(tests.fixtures.agent)."""
