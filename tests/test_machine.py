"""kgen.machine: the machine line every benchmark prints, and its readers."""

import os
import platform
import re
import sys

import pytest

from kgen import machine

pytestmark = pytest.mark.backend_agnostic

# Excerpts of real /proc/cpuinfo files (first processor, lines shortened).
EPYC_AVX2 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni
bogomips\t: 4499.99

processor\t: 1
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni
"""

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""

COOPER_LAKE = """\
model name\t: Intel(R) Xeon(R) Platinum 8380H CPU @ 2.90GHz
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16
"""

GRAVITON = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm
CPU implementer\t: 0x41
"""


def test_cpu_model_reads_the_first_model_name():
    assert machine.cpu_model(EPYC_AVX2) == "AMD EPYC 7B12"
    assert machine.cpu_model(SAPPHIRE_RAPIDS) == (
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz")


def test_cpu_model_without_a_model_name_falls_back_to_the_platform():
    expected = platform.processor() or platform.machine() or "unknown CPU"
    assert machine.cpu_model(GRAVITON) == expected
    assert machine.cpu_model("") == expected


def test_cpu_flags_are_the_first_processors_flag_set():
    flags = machine.cpu_flags(EPYC_AVX2)
    assert {"avx2", "fma", "sse4_2"} <= flags
    assert "avx512_bf16" not in flags
    assert {"bf16", "asimd"} <= machine.cpu_flags(GRAVITON)
    assert machine.cpu_flags("") == frozenset()


@pytest.mark.parametrize("text, expected, reason", [
    (EPYC_AVX2, False, "no avx512_bf16/amx_bf16 flag"),
    (SAPPHIRE_RAPIDS, True, "avx512_bf16/amx_bf16"),
    (COOPER_LAKE, True, "avx512_bf16"),
    (GRAVITON, False, "no avx512_bf16/amx_bf16 flag"),
    ("", False, "no CPU flags listed"),
])
def test_cpu_has_bf16_needs_avx512_bf16_or_amx_bf16(text, expected, reason):
    assert machine.cpu_has_bf16(text) == (expected, reason)


def test_cpu_has_bf16_outside_linux_is_no_with_a_reason(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    has, reason = machine.cpu_has_bf16()
    assert has is False
    assert "darwin" in reason


def test_machine_line_from_given_text():
    line = machine.machine_line(EPYC_AVX2, core_count=2, load_average=(1.02, 0.88, 0.5))
    assert line.startswith("machine: AMD EPYC 7B12 (")
    assert line.endswith(
        "), bf16: no (no avx512_bf16/amx_bf16 flag), 2 cores, load 1.02 0.88 0.50")
    line = machine.machine_line(SAPPHIRE_RAPIDS, core_count=1, load_average=(0, 0, 0))
    assert "bf16: yes (avx512_bf16/amx_bf16), 1 core, load 0.00 0.00 0.00" in line


def test_the_real_machine_line_has_every_field():
    line = machine.machine_line()
    match = re.fullmatch(
        r"machine: (?P<cpu>.+) \((?P<arch>[^()]+)\), bf16: (?P<bf16>yes|no) \((?P<why>.+)\), "
        r"(?P<cores>\d+) cores?, (?P<load>load \d+\.\d\d \d+\.\d\d \d+\.\d\d|load not available)",
        line)
    assert match, line
    assert int(match["cores"]) == machine.cores() >= 1
    assert machine.cores() <= (os.cpu_count() or 1)
    if sys.platform.startswith("linux"):
        assert match["cpu"] == machine.cpu_model()
        assert (match["bf16"] == "yes") == machine.cpu_has_bf16()[0]
    assert machine.load() is None or len(machine.load()) == 3


def _bench_results():
    """bench/_results.py, the bench scripts' shared table writer."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "_results.py"
    spec = importlib.util.spec_from_file_location("bench_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_results_replace_only_their_own_section(tmp_path):
    results = _bench_results()
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nintro\n\n<!-- bench:a start -->\nold a\n<!-- bench:a end -->\n\n"
                    "between\n\n<!-- bench:b start -->\nold b\n<!-- bench:b end -->\nend\n")
    body = results.section(("x", "y"), [(1, "p|q")], note="a note",
                           argv=[str(results.REPO / "bench" / "a.py"), "--n", "3", "--write-results",
                                 "--results-file", str(page)])
    results.write_section(page, "a", body)
    text = page.read_text()
    assert "old a" not in text and "old b" in text
    assert text.startswith("# Results\n\nintro\n\n<!-- bench:a start -->\n- Command: "
                           "`python bench/a.py --n 3`\n")
    assert "\nbetween\n" in text and text.endswith("<!-- bench:b end -->\nend\n")
    assert "| x | y |\n|---|---|\n| 1 | p\\|q |" in text
    assert "- Machine: `machine: " in text and "a note\n<!-- bench:a end -->" in text
    results.write_section(page, "c", "new c")
    assert page.read_text().endswith("## `bench/c.py`\n\n<!-- bench:c start -->\nnew c\n"
                                     "<!-- bench:c end -->\n")
