"""Projected cost of the ``paper`` profile: each main method's paper-length meta-training (its training episodes or
tasks, ``Method.paper_train_episodes``) times its measured milliseconds per training episode at the paper
profile's training shape, plus the 600 test episodes, on this machine.

    python scripts/paper_cost.py --device cpu --shots 1 5 --out paper_cost.md

The step is timed with ``benchmark.speed.time_run`` (the runner's own timed step, median of ``--steps``). Left
out, and said so in the table: validation passes (every ``val_every`` steps, a few percent of a run for most
methods), MTL's 100 pretraining epochs (measured with a shortened pretraining, ``pre_epochs=0.05``, validated once
on 2 episodes: a meta-step does not cost more for a better-pretrained encoder) and the transfer baselines, whose cost is pretraining, not
episodes. Figures are for reading; run it alone on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--methods", nargs="+", default=None, help="default: the main methods")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--test-episodes", type=int, default=10)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--out", default=None, help="markdown table file; default: print only")
    p.add_argument("--json", default=None, help="one JSON line per measurement to this file")
    a = p.parse_args(argv)

    from benchmark.pipeline import registry
    from benchmark.speed import PAPER_MEASUREMENT_OVERRIDES, paper_projection, prepare_measurement, time_run

    rows, lines = [], []
    for name in a.methods or registry.main_methods():
        for shots in a.shots:
            prepared = prepare_measurement(name, shots=shots, profile="paper",
                                           overrides=PAPER_MEASUREMENT_OVERRIDES.get(name, ()))
            r = time_run(prepared, a.device, a.steps, 2, a.test_episodes, results_dir=None, eval_group=0,
                         precision=a.precision)
            r.update(paper_projection(prepared, r))
            lines.append(json.dumps(r))
            rows.append(f"| {name} | {shots} | {r['train_episode']} x{r['meta_batch']} | "
                        f"{r['paper_train_episodes']:,} | "
                        f"{r['ms_per_train_episode_median']:.1f} | {r['projected_train_hours']:.1f} | "
                        f"{r['projected_test_hours']:.2f} |")
            print(rows[-1], flush=True)
    head = ["| method | shots | training episode (ways, shots, queries) x meta-batch | paper training episodes | "
            "ms per episode | projected training hours | test hours (600 episodes) |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    if a.out:
        Path(a.out).write_text("\n".join(head + rows) + "\n")
    if a.json:
        Path(a.json).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
