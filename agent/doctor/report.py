"""The doctor's report: one result per check, as text for people and JSON for machines."""

from typing import IO, Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from agent.telemetry.models import DeviceTelemetry

Status = Literal["ok", "warn", "fail"]


class CheckResult(BaseModel):
    """One check: ok, warn (works, but worth a look) or fail (the agent cannot work)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    status: Status
    message: str = Field(description="What was found, in plain words.")
    hint: Optional[str] = Field(None, description="What to do about it.")


def ok(name: str, message: str) -> CheckResult:
    return CheckResult(name=name, status="ok", message=message)


def warn(name: str, message: str, hint: Optional[str] = None) -> CheckResult:
    return CheckResult(name=name, status="warn", message=message, hint=hint)


def fail(name: str, message: str, hint: Optional[str] = None) -> CheckResult:
    return CheckResult(name=name, status="fail", message=message, hint=hint)


class DoctorReport(BaseModel):
    """``emotion-agent doctor --json`` prints this object."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    checks: List[CheckResult]
    telemetry: Optional[DeviceTelemetry] = Field(
        None, description="A device health reading (the device section of telemetry)."
    )

    @classmethod
    def of(
        cls, checks: List[CheckResult], telemetry: Optional[DeviceTelemetry] = None
    ) -> "DoctorReport":
        return cls(ok=all(c.status != "fail" for c in checks), checks=checks, telemetry=telemetry)

    def as_json(self) -> Dict[str, Any]:
        return self.model_dump(mode="json")


_LABEL = {"ok": "ok", "warn": "WARN", "fail": "FAIL"}


def _device_summary(dev: DeviceTelemetry) -> List[str]:
    def num(value: Optional[float], unit: str, digits: int = 0) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}{unit}"

    lines = [
        f"  cpu {num(dev.cpu_load_percent, '%')}, gpu {num(dev.gpu_load_percent, '%')}, "
        f"ram {num(dev.ram_used_mib, '')}/{num(dev.ram_total_mib, ' MiB')}, "
        f"swap {num(dev.swap_used_mib, '')}/{num(dev.swap_total_mib, ' MiB')}, "
        f"state dir free {num(dev.disk_free_mib, ' MiB')}"
    ]
    valid = [t for t in dev.temperatures or [] if t.valid and t.celsius is not None]
    if valid:
        hottest = max(valid, key=lambda t: t.celsius or 0.0)
        ignored = [t.name for t in dev.temperatures or [] if not t.valid]
        text = f"  hottest sensor {hottest.name} {hottest.celsius:.1f} C"
        if ignored:
            text += f" (ignored: {', '.join(ignored)})"
        lines.append(text)
    if dev.power_total_mw is not None:
        lines.append(f"  power {dev.power_total_mw / 1000:.2f} W")
    if dev.nvpmodel is not None:
        lines.append(f"  nvpmodel {dev.nvpmodel.name or '?'} (id {dev.nvpmodel.id})")
    if dev.throttling is not None and (dev.throttling.thermal or dev.throttling.over_current):
        what = dev.throttling.thermal_zones + dev.throttling.cooling_devices
        what += dev.throttling.over_current_rails
        lines.append(f"  THROTTLING: {', '.join(what)}")
    lines.append(f"  sources: {', '.join(dev.sources) or 'none'}")
    return lines


def render_text(report: DoctorReport, out: IO[str], header: str = "") -> None:
    if header:
        print(header, file=out)
    width = max((len(c.name) for c in report.checks), default=0)
    for check in report.checks:
        print(f"{_LABEL[check.status]:<5} {check.name:<{width}}  {check.message}", file=out)
        if check.hint and check.status != "ok":
            print(f"{'':<5} {'':<{width}}  fix: {check.hint}", file=out)
    if report.telemetry is not None:
        print("device health:", file=out)
        for line in _device_summary(report.telemetry):
            print(line, file=out)
    failed = sum(c.status == "fail" for c in report.checks)
    warned = sum(c.status == "warn" for c in report.checks)
    verdict = "all checks passed" if failed == 0 else f"{failed} check(s) failed"
    if warned:
        verdict += f", {warned} warning(s)"
    print(verdict, file=out)
