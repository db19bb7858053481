"""The real-time loop: per-frame steps, per-stage metrics and the reduced-rate
secondary stage."""
