"""emotion-agent: the daemon package.

Folders by concern (dependencies point one way: cli -> daemon -> pipeline /
publisher / telemetry -> engines):

- ``agent.cli``: the ``emotion-agent`` command line.
- ``agent.config``: the validated configuration (pydantic models, loading,
  error reporting).
- ``agent.logs``: the one logging setup (stderr or journald).
- ``agent.platform``: facts about the machine we run on (Jetson model, OpenCV origin).
"""

__version__ = "0.1.0"
