"""The records store: what a run leaves on disk and the only part of the harness the report reads (torch-free).

* :mod:`benchmark.store.files`: atomic writes and OS file locks;
* :mod:`benchmark.store.folders`: every file name of a results directory and the folders that own them
  (:class:`~benchmark.store.folders.RunFolder`, :class:`~benchmark.store.folders.EvaluationFolder`), and the
  upgrade of older records when they are read;
* :mod:`benchmark.store.leaderboard`: the per-run leaderboard CSV;
* :mod:`benchmark.store.statistics`: the mean and 95% interval of per-episode accuracies;
* :mod:`benchmark.store.compare`: whether two runs' records are identical (check, GPU check and report use it), and
  which recorded facts (device, CPU instruction set, threads, library versions) differ when they are not;
* :mod:`benchmark.store.spread`: training variance, the seed-to-seed spread of each method and setting
  (``scripts/seed_spread.py`` writes it to ``benchmark/reference/seed_spread.csv``).
"""
