"""The command-line toolkit every command shares (:mod:`benchmark.cli.toolkit`: exit codes, the one-line parser
and usage errors, argument checks, progress bars, the executors' workers' progress lines). It imports nothing of the
harness, so the data checker, the report and the executors use it too; the methods' options (``--method-file``,
``--help``'s catalogue) are :mod:`benchmark.pipeline.method_options` and the process's set-up is
:func:`benchmark.pipeline.machine.setup_torch`."""
