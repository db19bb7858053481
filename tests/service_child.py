"""A tiny daemon wired like the agent's will be, for tests that send it real signals.

    python -m tests.service_child CONFIG.yaml [--stall-after SECONDS]

It takes NOTIFY_SOCKET and WATCHDOG_USEC from its environment (as under
systemd), runs a "capture" and an "inference" thread that beat their
heartbeats, sends READY=1 once both made progress, reloads CONFIG on SIGHUP
(validated first), and on SIGTERM runs the shutdown steps in order. Each step
prints its name on stdout and sends STATUS=step <name>, so the test sees the
order both ways. ``--stall-after`` freezes the inference thread after that many
seconds (a hung inference call).
"""

import argparse
import sys
import threading
import time

from agent.config import ConfigError, load_config
from agent.logs import setup_logging
from agent.service import (
    Reloader,
    ServiceLifecycle,
    ServiceNotifier,
    Watchdog,
    make_notifier,
    watchdog_interval,
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--stall-after", type=float, default=None)
    args = parser.parse_args()
    log = setup_logging("INFO", "off", environ={})

    loaded = load_config(args.config, environ={}, check_files=True)
    current = {"config": loaded.config}
    notifier = ServiceNotifier(make_notifier(prefer_systemd_python=False))
    watchdog = Watchdog(notifier, watchdog_interval(), logger=log)
    stop = threading.Event()
    started = time.monotonic()

    def worker(name: str, stall_after):
        beat = watchdog.register(name, deadline_s=0.3)
        while not stop.is_set():
            if stall_after is not None and time.monotonic() - started > stall_after:
                stop.wait()  # hung: no more progress, thread still alive
                return
            beat.beat()
            stop.wait(0.02)

    threads = [
        threading.Thread(target=worker, args=("capture", None), daemon=True),
        threading.Thread(target=worker, args=("inference", args.stall_after), daemon=True),
    ]
    for thread in threads:
        thread.start()

    def step(name: str):
        def run():
            notifier.status(f"step {name}")
            print(name, flush=True)

        return (name, run)

    def stop_threads():
        stop.set()
        for thread in threads:
            thread.join()
        watchdog.stop()
        print("stop capture", flush=True)
        notifier.status("step stop capture")

    def apply(config):
        current["config"] = config
        print(f"applied max_faces={config.pipeline.max_faces}", flush=True)

    lifecycle = ServiceLifecycle(
        notifier,
        [
            ("stop capture", stop_threads),
            step("drain pipeline"),
            step("flush outbox"),
            step("publish stopped"),
            step("close"),
        ],
        reloader=Reloader(
            load=lambda: load_config(args.config, environ={}, check_files=True).config,
            apply=apply,
            describe=lambda exc: str(exc) if isinstance(exc, ConfigError) else repr(exc),
        ),
        status=lambda: f"running: max_faces={current['config'].pipeline.max_faces}",
        logger=log,
    )
    lifecycle.install_signal_handlers()
    time.sleep(0.05)  # both threads made progress: "the loop runs"
    watchdog.start()
    lifecycle.ready()
    print("ready", flush=True)
    code = lifecycle.run(idle_s=0.5)
    lifecycle.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
