"""Profiling helpers: memory accounting (more to come: timeline report, plots)."""
