from tests.fixtures.agent import *  # noqa: F403 - session fixtures of the agent area
