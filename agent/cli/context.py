"""What every subcommand gets: the common options and injected streams and environment."""

import logging
from dataclasses import dataclass, field
from typing import IO, List, Mapping, Optional

from agent.config import LoadedConfig, load_config
from agent.logs import setup_logging


@dataclass
class CliContext:
    config_path: Optional[str]
    overrides: List[str]
    log_level: Optional[str]
    environ: Mapping[str, str]
    stdout: IO[str]
    stderr: IO[str]
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("emotion_agent"))

    def load(self, path: Optional[str] = None, *, check_files: bool = True) -> LoadedConfig:
        """Load the effective configuration (raises ConfigError) and apply its logging."""
        loaded = load_config(
            path or self.config_path,
            environ=self.environ,
            cli_set=self.overrides,
            check_files=check_files,
        )
        cfg = loaded.config.logging
        self.logger = setup_logging(
            self.log_level or cfg.level, cfg.journald, stream=self.stderr, environ=self.environ
        )
        for notice in loaded.notices:
            self.logger.info(notice)
        return loaded
