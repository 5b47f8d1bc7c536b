"""Prove that the TF Serving release `kgen deploy` names loads every family's
export: each export is loaded and every signature run in that release's
TensorFlow, in a separate virtual environment without kgen.

    python tests/tfserving_compat.py --venv .venv-tfserving [--create]

For each family (`tests/export/helpers.tiny`) this exports an untrained
model with this process's TensorFlow, then in `--venv` (which holds only
`tensorflow-cpu` of the release's TensorFlow version; `--create` makes it
with pip, reusing pip's cache) runs, with no kgen importable:

- `tf.saved_model.load` and every signature of the export, with inputs
  built from the signature's own input specs (one or two rows);
- `saved_model_cli run` on the `generate` signature, TF Serving's own C++
  SavedModel loader and session.

It prints one line per export and signature, and exits non-zero when any
export fails to load or any signature fails to answer.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "gan", "diffusion", "video", "audio", "lm")

# Run in the release's TensorFlow: load each export and run every
# signature on its own warm-up request (the one TF Serving replays when it
# loads the version), given as JSON.
CHECK = r'''
import json, sys
sys.modules["kgen"] = None   # kgen must not be importable here
import numpy as np
import tensorflow as tf

requests = json.load(open(sys.argv[1]))
report = {"tensorflow": tf.__version__, "exports": {}}
for path, signatures in requests.items():
    entry = report["exports"][path] = {}
    loaded = tf.saved_model.load(path)
    for name, inputs in signatures.items():
        feed = {k: tf.constant(np.array(v["value"], dtype=object if v["dtype"] == "string"
                                        else v["dtype"]))
                for k, v in inputs.items()}
        outputs = loaded.signatures[name](**feed)
        entry[name] = {k: list(v.shape) for k, v in outputs.items()}
    entry["signatures"] = sorted(loaded.signatures)
print(json.dumps(report))
'''


def warmup_requests(version):
    """`{signature: {input: {"dtype", "value"}}}` of an export's warm-up file."""
    import numpy as np
    import tensorflow as tf

    from kgen.export.warmup import WARMUP_FILE
    from kgen.export.warmup import read_warmup_file

    requests = {}
    for log in read_warmup_file(version / WARMUP_FILE):
        request = log.predict_log.request
        inputs = {}
        for name, proto in request.inputs.items():
            array = tf.make_ndarray(proto)
            if array.dtype == object:
                inputs[name] = {"dtype": "string",
                                "value": np.vectorize(lambda b: b.decode())(array).tolist()}
            else:
                inputs[name] = {"dtype": str(array.dtype), "value": array.tolist()}
        requests[request.model_spec.signature_name] = inputs
    return requests


def create_venv(venv, requirement):
    print(f"creating {venv} with {requirement}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", requirement], check=True)


def export_families(root):
    """Export an untrained model of every family under `root`; returns
    `{family: version_dir}`."""
    sys.path.insert(0, str(REPO))
    from kgen.export import export_model
    from tests.export.helpers import tiny

    return {family: export_model(tiny(family), root / family, max_rows=4)
            for family in FAMILIES}


def cli_inputs(inputs):
    """`saved_model_cli run`'s --input_exprs for one request's inputs:
    Python literals (it evaluates nothing else), cast by the signature."""
    return ";".join(f"{name}={spec['value']!r}" for name, spec in inputs.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=pathlib.Path, required=True,
                        help="the virtual environment holding the release's tensorflow-cpu")
    parser.add_argument("--create", action="store_true",
                        help="create --venv first (pip install tensorflow-cpu==X.Y.*)")
    args = parser.parse_args()
    # The checks run with the temporary folder as their working directory.
    args.venv = args.venv.resolve()
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kgen.export import serving_release
    from kgen.machine import machine_line

    writer = serving_release.tensorflow_version()
    release = serving_release.release_for(writer)
    if release is None:
        sys.exit(f"TensorFlow {writer}: no TF Serving release is recorded for it in "
                 "kgen.export.serving_release.PROVEN")
    requirement = serving_release.tensorflow_requirement(release)
    print(machine_line())
    print(f"exports written by TensorFlow {writer}; TF Serving release {release} "
          f"({serving_release.image(release)}) runs {requirement}", flush=True)
    if args.create:
        create_venv(args.venv, requirement)
    python = args.venv / "bin" / "python"
    cli = args.venv / "bin" / "saved_model_cli"
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        versions = export_families(pathlib.Path(tmp) / "saved_models")
        print(f"exported {len(versions)} families in {time.time() - start:.0f}s", flush=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        script = pathlib.Path(tmp) / "check.py"
        script.write_text(CHECK)
        requests = {str(v): warmup_requests(v) for v in versions.values()}
        (pathlib.Path(tmp) / "requests.json").write_text(json.dumps(requests))
        result = subprocess.run([str(python), "-I", str(script), "requests.json"],
                                cwd=tmp, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr[-4000:])
            sys.exit(f"tf.saved_model.load in {args.venv} failed")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"loaded with TensorFlow {report['tensorflow']} (tf.saved_model.load, no kgen):")
        for family, version in versions.items():
            answered = dict(report["exports"][str(version)])
            signatures = answered.pop("signatures")
            for name, outputs in sorted(answered.items()):
                print(f"  {family:<10} {name:<17} -> {outputs}")
            unanswered = sorted(set(signatures) - set(answered))
            if "generate" not in answered or unanswered:
                failures.append(f"{family}: signatures not answered: {unanswered or 'generate'}")
        print("saved_model_cli run --signature_def generate (TF Serving's C++ loader):")
        for family, version in versions.items():
            exprs = cli_inputs(requests[str(version)]["generate"])
            run = subprocess.run([str(cli), "run", "--dir", str(version), "--tag_set", "serve",
                                  "--signature_def", "generate", "--input_exprs", exprs],
                                 cwd=tmp, env=env, capture_output=True, text=True)
            ok = run.returncode == 0 and "Result for output key" in run.stdout
            keys = [line.split("key ")[1].rstrip(":") for line in run.stdout.splitlines()
                    if line.startswith("Result for output key")]
            print(f"  {family:<10} {'answered ' + ', '.join(keys) if ok else 'FAILED'}")
            if not ok:
                failures.append(f"{family}: saved_model_cli run failed: {run.stderr[-1500:]}")
    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"every family's export loads and answers in TensorFlow {report['tensorflow']} "
          f"(TF Serving {release})")


if __name__ == "__main__":
    main()
