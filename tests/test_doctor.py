"""spamlang doctor: every check reported, exit status 1 only when something SpamLang needs is broken."""
from __future__ import annotations

import json
import re

from spamlang.cli import doctor
from spamlang.errors import SpamLangError


def test_doctor_reports_every_check_and_passes_here(run_cli):
    r = run_cli("doctor", "--seconds", "0", "--json")
    assert r.code == 0, r.err
    checks = {c["name"]: c for c in json.loads(r.out)}
    assert {"python", "torch", "numpy", "pandas", "threads", "cpu", "cuda", "bf16 autocast (cpu)", "torch.compile",
            "disk", "tasks", "heads", "suite smoke", "suite paper-cpu"} <= set(checks)
    assert all(c["ok"] for c in checks.values()) and "throughput" not in checks
    assert checks["bf16 autocast (cpu)"]["detail"] == "works" and "spam" in checks["tasks"]["detail"]
    assert re.search(r"free of .* at /", checks["disk"]["detail"])


def test_a_broken_suite_or_missing_library_fails_with_status_1(run_cli, monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda p: None if p in ("tqdm", "gensim") else real(p))
    import spamlang.sweeps.suite as suite
    load = suite.load

    def broken(name):
        if name == "smoke":
            raise SpamLangError("smoke.toml: unknown key 'x'")
        return load(name)

    monkeypatch.setattr(suite, "load", broken)
    r = run_cli("doctor", "--seconds", "0")
    assert r.code == 1
    assert re.search(r"^BAD  tqdm +missing: pip install -e \.$", r.out, re.M)
    assert re.search(r"^BAD  suite smoke +smoke.toml: unknown key 'x'$", r.out, re.M)
    assert re.search(r"^--   extra \[text\] +missing gensim: pip install 'spamlang\[text\]'$", r.out, re.M)
    assert r.err.strip() == "spamlang: error: 2 check(s) failed: tqdm, suite smoke"


def test_throughput_trains_for_about_the_time_given():
    check = doctor.throughput(0.3)
    tokens, steps, seconds = re.fullmatch(r"([\d,]+) training tokens/s, [\d.e+]+ FLOP/s \((\d+) steps in ([\d.]+) s "
                                          r"on \d+ thread\(s\), cpu\)", check.detail).groups()
    assert int(steps) >= 1 and 0.3 <= float(seconds) < 5
    assert int(tokens.replace(",", "")) > 0
