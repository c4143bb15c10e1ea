"""Runnable Beam jobs, one module per job (``python -m beam_jobs.<job>``)."""
