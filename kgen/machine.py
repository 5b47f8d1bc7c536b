"""What machine a figure was measured on: CPU model, bfloat16 support, cores, load.

Every benchmark prints `machine_line()` first, and every figure in the docs
carries it, because the same command gives other figures on another CPU
(bfloat16 in particular is fast only where the CPU runs it natively).

Each reader that parses text takes it as an argument (`cpuinfo_text`) and
reads `/proc/cpuinfo` only when given none, so the parsing is testable on
any machine and reusable by code that decides defaults from it:

    >>> from kgen import machine
    >>> machine.cpu_has_bf16("flags\t: fpu avx2 avx512_bf16\n")
    (True, 'avx512_bf16')
    >>> print(machine.machine_line())  # doctest: +SKIP
    machine: AMD EPYC (x86_64), bf16: no (no avx512_bf16/amx_bf16 flag), 2 cores, load 1.02 0.88 0.50

Importing this module imports neither Keras nor TensorFlow.
"""

import os
import platform
import sys

CPUINFO = "/proc/cpuinfo"

# The /proc/cpuinfo flags of a CPU that computes bfloat16 natively:
# AVX-512 BF16 (dot products and conversions) and AMX-BF16 (tile matmuls).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def read_cpuinfo():
    """The text of /proc/cpuinfo, or None where there is none (not Linux)."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _first_field(cpuinfo_text, names):
    """The value of the first `name : value` line whose name is in `names`."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in names:
            return value.strip()
    return None


def cpu_model(cpuinfo_text=None):
    """The CPU's model name, e.g. "AMD EPYC 7B13".

    Args:
        cpuinfo_text: the text of /proc/cpuinfo; read from the machine when
            None.

    Returns:
        The `model name` of the first processor (`Processor`, `cpu model` or
        `Hardware` on CPUs that have no such line), else what `platform`
        reports, else "unknown CPU".
    """
    if cpuinfo_text is None:
        cpuinfo_text = read_cpuinfo()
    if cpuinfo_text:
        name = _first_field(cpuinfo_text, ("model name", "processor name", "cpu model",
                                           "hardware"))
        if name:
            return " ".join(name.split())
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags(cpuinfo_text=None):
    """The CPU's feature flags, as /proc/cpuinfo spells them.

    Args:
        cpuinfo_text: the text of /proc/cpuinfo; read from the machine when
            None.

    Returns:
        A frozenset of lower-case flag names (`flags` on x86, `Features` on
        ARM) of the first processor; empty where there is no such text.
    """
    if cpuinfo_text is None:
        cpuinfo_text = read_cpuinfo()
    if not cpuinfo_text:
        return frozenset()
    flags = _first_field(cpuinfo_text, ("flags", "features"))
    return frozenset(flags.lower().split()) if flags else frozenset()


def cpu_has_bf16(cpuinfo_text=None):
    """Whether the CPU computes bfloat16 natively, and why that answer.

    Native bfloat16 means an AVX512_BF16 or AMX-BF16 flag in /proc/cpuinfo.
    Without one, bfloat16 arithmetic is emulated and usually slower than
    float32.

    Args:
        cpuinfo_text: the text of /proc/cpuinfo; read from the machine when
            None. Outside Linux, and where the file cannot be read, the
            answer is False.

    Returns:
        `(has_bf16, reason)`: the flags found (e.g. "avx512_bf16"), or why
        the answer is no (e.g. "no avx512_bf16/amx_bf16 flag").
    """
    if cpuinfo_text is None:
        if not sys.platform.startswith("linux"):
            return False, f"not read on {sys.platform} (no /proc/cpuinfo)"
        cpuinfo_text = read_cpuinfo()
        if cpuinfo_text is None:
            return False, f"{CPUINFO} could not be read"
    flags = cpu_flags(cpuinfo_text)
    if not flags:
        return False, "no CPU flags listed"
    found = [flag for flag in BF16_FLAGS if flag in flags]
    if found:
        return True, "/".join(found)
    return False, f"no {'/'.join(BF16_FLAGS)} flag"


def cores():
    """The CPU cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load():
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def machine_line(cpuinfo_text=None, core_count=None, load_average=None):
    """One line naming the machine, to print before any measured figure.

    Args:
        cpuinfo_text: the text of /proc/cpuinfo; read from the machine when
            None.
        core_count: the cores; `cores()` when None.
        load_average: the (1, 5, 15) minute load averages; `load()` when None.

    Returns:
        E.g. "machine: AMD EPYC (x86_64), bf16: no (no avx512_bf16/amx_bf16
        flag), 2 cores, load 1.02 0.88 0.50".
    """
    has_bf16, reason = cpu_has_bf16(cpuinfo_text)
    core_count = cores() if core_count is None else core_count
    load_average = load() if load_average is None else load_average
    load_text = ("load " + " ".join(f"{x:.2f}" for x in load_average)
                 if load_average is not None else "load not available")
    return (f"machine: {cpu_model(cpuinfo_text)} "
            f"({platform.machine() or 'unknown architecture'}), "
            f"bf16: {'yes' if has_bf16 else 'no'} ({reason}), "
            f"{core_count} core{'' if core_count == 1 else 's'}, {load_text}")
