"""``emotion-agent doctor``: checks that explain, in plain words, what keeps the agent from
working here, and what to do about it.

- ``runner``: :func:`run_doctor` runs the checks in order (config, disk, clock, jtop,
  backend, models, camera, broker) and reads the device's health once;
- ``system``: disk space in state_dir, clock, jetson-stats, inference backend;
- ``modelfiles``: the model manifest and the files' sha256;
- ``network``: the MQTT broker (connect + authenticate) and the camera;
- ``report``: results (ok / warn / fail) as text or JSON.
"""

from agent.doctor.report import CheckResult, DoctorReport, render_text
from agent.doctor.runner import DoctorEnv, run_doctor

__all__ = ["CheckResult", "DoctorEnv", "DoctorReport", "render_text", "run_doctor"]
