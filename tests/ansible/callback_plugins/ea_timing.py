"""Test-only Ansible callback: the slowest tasks of a run, for the tests' logs.

Enabled by tests/ansible/test_rollout.py (ANSIBLE_CALLBACKS_ENABLED=ea_timing); prints
"EA-TIMING <seconds> <task>" lines for the ten slowest tasks (all hosts of a task
together, batches summed) at the end of the run.
"""

import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: ea_timing
type: aggregate
short_description: slowest tasks of a run
description: Prints the ten slowest tasks at the end of a run.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "ea_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.totals = {}
        self.current = None
        self.started = 0.0

    def _close(self):
        if self.current is not None:
            elapsed = time.monotonic() - self.started
            self.totals[self.current] = self.totals.get(self.current, 0.0) + elapsed
            self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current = task.get_name()
        self.started = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        slowest = sorted(self.totals.items(), key=lambda item: -item[1])[:10]
        for name, seconds in slowest:
            self._display.display(f"EA-TIMING {seconds:7.1f} {name}")
