"""tests/mutations.py runs (two of its mutations): a copy of the tree gets the bug, the named tests fail there,
and the tree itself is untouched. The full run is tests/mutations.py, not part of the suite."""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_two_mutations_are_caught_in_a_copy_of_the_tree():
    before = open(os.path.join(ROOT, "hyperfused", "ops", "reference.py")).read()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mutations.py"), "--only", "M01", "M02"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| M0")]
    assert len(rows) == 2 and all("| caught |" in r for r in rows), out.stdout
    assert open(os.path.join(ROOT, "hyperfused", "ops", "reference.py")).read() == before


def test_an_unknown_mutation_is_refused():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "mutations.py"), "--only", "M99"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "unknown mutation ids ['M99']" in out.stderr
