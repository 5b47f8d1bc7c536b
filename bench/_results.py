"""What every bench script shares: the machine line, and its results table.

Each script calls `start()` before it measures anything (which prints the
machine line: CPU model, native bfloat16 or not, cores, load) and ends with
`report(NAME, headers, rows, args)`, which prints its table as Markdown and,
when the script was given `--write-results` (added by `add_arguments`),
replaces the script's own section of `docs/results.md`:

    <!-- bench:NAME start -->
    ... the table, and the command, commit, date and machine that made it ...
    <!-- bench:NAME end -->

Only the text between a script's two markers changes; a section that is
missing is appended at the end of the file under a heading of its own.
"""

import datetime
import os
import pathlib
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results.md"

if str(REPO) not in sys.path:  # kgen from this checkout when it is not installed
    sys.path.insert(1, str(REPO))

from kgen import machine  # noqa: E402  (after the path, and imports no Keras)

_machine = None


def add_arguments(parser):
    """Adds `--write-results` and `--results-file FILE` to a bench script's parser."""
    parser.add_argument(
        "--write-results", action="store_true",
        help="also write the table, with the command, commit, date and machine line, "
             "into this script's section of --results-file")
    parser.add_argument("--results-file", type=pathlib.Path, default=RESULTS,
                        metavar="FILE", help="default: docs/results.md")


def start():
    """Prints the machine line (once) and returns it; call before measuring."""
    global _machine
    if _machine is None:
        _machine = machine.machine_line()
        print(_machine, flush=True)
    return _machine


def markdown_table(headers, rows):
    """A Markdown table; each cell is printed with `str` ("" for None)."""
    def cell(value):
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def command_line(argv=None):
    """The command that ran, as a user would type it, without `--write-results`
    and `--results-file`."""
    argv = list(sys.argv if argv is None else argv)
    script = pathlib.Path(argv[0])
    try:
        script = script.resolve().relative_to(REPO)
    except ValueError:
        pass
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--write-results" or arg.startswith("--results-file="):
            continue
        if arg == "--results-file":
            skip = True
            continue
        kept.append(arg)
    return shlex.join(["python", str(script), *kept])


def commit():
    """`git rev-parse --short HEAD`, with "+ uncommitted changes" where the tree differs."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    # The results page itself changes as each bench writes its section.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                            ".", f":!{RESULTS.relative_to(REPO)}"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return f"{head} + uncommitted changes" if dirty else head


def section(headers, rows, note=None, argv=None):
    """The text of a results section: provenance, the table, and a note."""
    now = datetime.datetime.now(datetime.timezone.utc)
    parts = [
        f"- Command: `{command_line(argv)}`",
        f"- Commit: `{commit()}`",
        f"- Date: {now:%Y-%m-%d %H:%M} UTC",
        f"- Machine: `{start()}`",
        "",
        markdown_table(headers, rows),
    ]
    if note:
        parts += ["", note]
    return "\n".join(parts)


def write_section(path, name, body):
    """Replaces the text between `name`'s markers in `path` with `body`."""
    path = pathlib.Path(path)
    begin, end = f"<!-- bench:{name} start -->", f"<!-- bench:{name} end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Results\n"
    block = f"{begin}\n{body}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + f"\n\n## `bench/{name}.py`\n\n{block}\n"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def report(name, headers, rows, args=None, note=None):
    """Prints the table; with `args.write_results`, writes it into the results page.

    Args:
        name: the script's name (`bench/NAME.py`), which names its markers.
        headers: the column names.
        rows: one sequence of cells per row.
        args: the script's parsed arguments (`add_arguments` added
            `write_results` and `results_file`).
        note: a line printed and written under the table (what the figures
            mean, targets).
    """
    body = section(headers, rows, note)
    print()
    print(body, flush=True)
    if getattr(args, "write_results", False):
        path = args.results_file
        write_section(path, name, body)
        print(f"\nwrote the bench:{name} section of {path}", flush=True)
