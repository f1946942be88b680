"""Command-line interface: ``vtp eval`` and ``vtp show`` (see :mod:`.main`)."""
