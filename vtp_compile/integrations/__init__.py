"""Integrations of vtp_compile with evaluation toolkits (each imported only on demand)."""
