"""Export a `.keras` file in a TensorFlow-backend process.

Exports are written by the TensorFlow backend, so a JAX or PyTorch process
exports through a child process: `export_in_subprocess` runs

    python -m kgen.export._worker MODEL.keras --to BASE --max-rows N --result FILE

with `KERAS_BACKEND=tensorflow`. The child calls `kgen.export.export_model`
and writes its outcome to `FILE` as JSON: `{"version_dir": PATH}`, or
`{"error": {"module", "type", "message"}}` naming the exception it raised.
The parent reads that file (never the child's output) and returns the
version directory or raises the same named error as an export in the
parent process would (a damaged file, non-finite weights, a model with no
serving signatures).
"""

import argparse
import importlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

# The modules whose exceptions the parent raises again by name.
_TRUSTED_MODULES = ("builtins", "kgen")


def export_in_subprocess(model_path, to, max_rows):
    """`export_model(model_path, to, max_rows)` in a TensorFlow-backend child.

    Args:
        model_path: the `.keras` file.
        to: the model's base path, `saved_models/<name>`.
        max_rows: as `export_model`.

    Returns:
        `pathlib.Path` of the new version directory.

    Raises:
        the child's exception (its class and message) when the export
        failed; `RuntimeError` with the end of the child's stderr when the
        child died without a result (killed, or crashed on start-up).
    """
    with tempfile.TemporaryDirectory() as tmp:
        result_path = pathlib.Path(tmp) / "result.json"
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        finished = subprocess.run(
            [sys.executable, "-m", "kgen.export._worker", str(model_path),
             "--to", str(to), "--max-rows", str(max_rows), "--result", str(result_path)],
            env=env, capture_output=True, text=True,
        )
        result = _read_result(result_path)
    if result is None:
        how = (f"was killed by signal {-finished.returncode}" if finished.returncode < 0
               else f"exited with status {finished.returncode} and no result")
        raise RuntimeError(
            f"export of {model_path} in a TensorFlow-backend process {how}:\n"
            f"{finished.stderr[-4000:]}"
        )
    if "version_dir" in result:
        return pathlib.Path(result["version_dir"])
    raise _rebuild(result.get("error") or {}, model_path)


def _read_result(path):
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def _rebuild(error, model_path):
    """The child's exception, as the same class when it is kgen's or a
    built-in one; otherwise a RuntimeError naming it."""
    module, name = str(error.get("module", "")), str(error.get("type", ""))
    message = str(error.get("message", ""))
    if module.split(".")[0] in _TRUSTED_MODULES and name.isidentifier():
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, Exception):
            try:
                return cls(message)
            except Exception:  # a class whose constructor wants more
                pass
    return RuntimeError(f"export of {model_path} in a TensorFlow-backend process "
                        f"failed: {module}.{name}: {message}")


def _write_result(path, result):
    """Write the result as a whole file (a temporary sibling, renamed)."""
    path = pathlib.Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(result), encoding="utf-8")
    os.replace(partial, path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kgen.export._worker")
    parser.add_argument("model")
    parser.add_argument("--to", required=True)
    parser.add_argument("--max-rows", type=int, required=True)
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from kgen.export import export_model

    try:
        version_dir = export_model(args.model, args.to, max_rows=args.max_rows)
    except Exception as e:
        _write_result(args.result, {"error": {
            "module": type(e).__module__, "type": type(e).__qualname__,
            "message": str(e)}})
        return 1
    _write_result(args.result, {"version_dir": str(version_dir)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
