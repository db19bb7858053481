"""The real-time loop (``loop``), its per-stage metrics (``metrics``), detection one
frame ahead on its own thread (``detect_ahead``) and the reduced-rate secondary
stage (``secondary``)."""
