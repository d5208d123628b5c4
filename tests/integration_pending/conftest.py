"""Fixtures for the pending integration tests: the very same ones as tests/integration.

The tests in this directory specify RabbitMQ's queue and routing extensions (TTL,
dead-lettering, length limits, alternate exchanges, priorities, consumer priorities,
single active consumer, CC/BCC) before Warren implements them; each file moves to
tests/integration once its feature lands. They were validated against RabbitMQ 3.10
(WARREN_TEST_EXTERNAL=127.0.0.1:<port> or WARREN_TEST_RABBITMQ=1).

tests/integration/conftest.py is loaded under another module name (a plain
`from conftest import *` would import this file itself, as pytest registers both as
"conftest"), and all of its names - fixtures, hooks, the autouse deadline fixture -
are re-exported so pytest finds them here.
"""
import importlib.util
import os
import sys

_INTEGRATION_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "integration"))
if _INTEGRATION_DIR not in sys.path:
    sys.path.insert(0, _INTEGRATION_DIR)

_SHARED_NAME = "warren_integration_conftest"
_shared = sys.modules.get(_SHARED_NAME)
if _shared is None:
    _spec = importlib.util.spec_from_file_location(
        _SHARED_NAME, os.path.join(_INTEGRATION_DIR, "conftest.py"))
    _shared = importlib.util.module_from_spec(_spec)
    sys.modules[_SHARED_NAME] = _shared
    _spec.loader.exec_module(_shared)

globals().update({name: value for name, value in vars(_shared).items()
                  if not name.startswith("__")})
