"""python -m benchmark.gpu_check: its dry mode runs every part on the CPU and writes the summary; one failing part
does not stop the others."""
import benchmark.gpu_check as gc

SECTIONS = ["## Verdict", "## (a) Speed", "## (b) Determinism", "## (c) Resume", "## (d) Throughput"]


def test_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.md"
    rc = gc.main(["--dry-run", "--budget-s", "45", "--out", str(out), "--keep", str(tmp_path / "work")])
    text = out.read_text()
    for s in SECTIONS:
        assert s in text, s
    assert "Device `cpu`" in text and "dry run" in text
    assert text.count("| PASS |") + text.count("| FAIL |") == 4  # a verdict for each part
    assert "| protonet | 1 | fp32 |" in text  # the first speed case always runs
    assert rc in (0, 1)


def test_a_failing_part_is_recorded_and_the_others_run(tmp_path, monkeypatch):
    calls = []

    def broken(plan, deadline, work):
        calls.append("speed")
        raise RuntimeError("no kernel image")

    def fine(name):
        def part(plan, deadline, work):
            calls.append(name)
            return gc.Part(name, gc.TITLES[name], ok=True, lines=[f"{name} figures"])
        return part

    monkeypatch.setattr(gc, "part_speed", broken)
    for name, fn in (("determinism", "part_determinism"), ("resume", "part_resume"),
                     ("throughput", "part_throughput")):
        monkeypatch.setattr(gc, fn, fine(name))
    out = tmp_path / "g.md"
    assert gc.main(["--dry-run", "--out", str(out)]) == 1
    text = out.read_text()
    assert calls == ["speed", "determinism", "resume", "throughput"]
    assert "RuntimeError: no kernel image" in text and text.count("| PASS |") == 3 and text.count("| FAIL |") == 1
    assert gc.main(["--dry-run", "--parts", "nosuch", "--out", str(out)]) == 2
