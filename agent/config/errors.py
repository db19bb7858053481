"""Configuration errors: what went wrong, where it came from, and exit code 78.

Messages name the source (file and line, environment variable or command-line
option), the field path and what is wrong, e.g.::

    /etc/emotion-agent/config.yaml: invalid configuration
      mqtt.port: must be <= 65535, got 70000 (line 12)

Secret values are never echoed: not for secret fields, not for unknown keys (a
mistyped ``pasword:`` holds a password), and never as a YAML source snippet.
"""

from dataclasses import dataclass
from typing import List, Optional

# sysexits.h EX_CONFIG: systemd's RestartPreventExitStatus=78 stops a restart loop.
EX_CONFIG = 78


@dataclass(frozen=True)
class Origin:
    """Where a configuration value came from."""

    kind: str  # "file", "env", "cli" or "default"
    name: str = ""  # file path, variable name or option text
    line: Optional[int] = None  # 1-based line in the file

    def describe(self, config_file: Optional[str]) -> str:
        if self.kind == "file":
            where = f"line {self.line}" if self.line else ""
            if self.name != config_file:
                where = f"{self.name} {where}".strip()
            return where
        if self.kind == "env":
            return f"from environment variable {self.name}"
        if self.kind == "cli":
            return f"from command-line option --set {self.name}"
        return f"default: {self.name}" if self.name else ""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: the dotted field path ('' for the whole file) and the message."""

    path: str
    message: str
    origin: Optional[Origin] = None

    def render(self, config_file: Optional[str]) -> str:
        where = self.origin.describe(config_file) if self.origin else ""
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text} ({where})" if where else text


class ConfigError(Exception):
    """The configuration cannot be used. ``str()`` is the full, printable report."""

    exit_code = EX_CONFIG

    def __init__(self, source: Optional[str], issues: List[ConfigIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.source}: invalid configuration" if self.source else "invalid configuration"
        if len(self.issues) == 1 and not self.issues[0].path:
            message = self.issues[0].message
            return f"{self.source}: {message}" if self.source else message
        lines = [head]
        lines.extend("  " + issue.render(self.source) for issue in self.issues)
        return "\n".join(lines)
