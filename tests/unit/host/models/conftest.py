from tests.fixtures.models import *  # noqa: F403  (session fixtures until registered globally)
