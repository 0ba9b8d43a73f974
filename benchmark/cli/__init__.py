"""The command-line toolkit the commands (``python -m benchmark.run``, ``evaluate``, ``check``, ``speed``,
``gpu_check``, ``report``) share: :mod:`benchmark.cli.toolkit` (exit codes, one-line usage errors, argument
types, thread and device set-up, progress bars) and :mod:`benchmark.cli.methods` (``--method-file`` and the
method catalogue of ``--help``, read without importing PyTorch)."""
