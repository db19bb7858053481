"""What every subcommand gets: the common options and injected streams and environment."""

import logging
from dataclasses import dataclass, field
from typing import IO, List, Mapping, Optional, Set

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
    said: Set[str] = field(default_factory=set)  # notices already shown by this command

    def load(
        self,
        path: Optional[str] = None,
        *,
        check_files: bool = True,
        announce: bool = False,
        writes: bool = False,
    ) -> LoadedConfig:
        """Load the effective configuration (raises ConfigError) and apply its logging.

        Notices are said once per command, and only where they matter: ``announce``
        (run, doctor, config show) says that no configuration file was found and where
        state and engines go; ``writes`` (commands that write the engine cache or the
        outbox) says only where they go."""
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
        shown = (loaded.notices if announce else []) + (
            loaded.path_notices if announce or writes else []
        )
        for notice in shown:
            if notice not in self.said:
                self.said.add(notice)
                self.logger.info(notice)
        return loaded
