"""Nothing unbounded: every family's export, at its recorded limits.

Each export (default `max_rows`) gets the largest request it allows and
then requests one row over and far over (the sizes that once passed 6 GB):
the allowed one runs, each refusal is INVALID_ARGUMENT naming the input and
comes back quickly, and the serving process's peak memory stays under
`PEAK_RSS_MB`. The graph is what TensorFlow writes whatever the training
backend, so this runs once, on the TensorFlow backend, in a process that
cannot import kgen (as TF Serving runs it).
"""

import textwrap

import pytest

from kgen.export import DEFAULT_MAX_ROWS
from kgen.export import export_model
from tests.export.helpers import run_without_kgen
from tests.export.helpers import tiny

pytestmark = pytest.mark.tf_only

# Peak resident memory of the whole serving process (TensorFlow itself takes
# about 0.6 GB) across every request below.
PEAK_RSS_MB = 1500
# A refusal comes from the checks before the loop: well under a second.
REFUSAL_SECONDS = 2.0


SCRIPT = textwrap.dedent("""
    import time
    version_dir, family = sys.argv[1], sys.argv[2]
    meta = json.load(open(version_dir + "/assets.extra/kgen.json"))
    generate = tf.saved_model.load(version_dir).signatures["generate"]
    max_rows = meta["max_rows"]

    def request(rows, **settings):
        inputs = {"seed": tf.range(rows, dtype=tf.int64)}
        if family in ("gan", "diffusion"):
            inputs["label"] = tf.fill([rows], settings.pop("label", 3))
        if family == "diffusion":
            inputs["num_steps"] = tf.fill([rows], settings.pop("num_steps", 10))
            inputs["guidance_scale"] = tf.fill([rows], 2.0)
        if family == "lm":
            inputs["prompt"] = tf.fill([rows], "ab")
            inputs["max_new_tokens"] = tf.fill([rows], settings.pop("max_new_tokens", 4))
            inputs["temperature"] = tf.fill([rows], 1.0)
            inputs["top_k"] = tf.fill([rows], 0)
            inputs["top_p"] = tf.fill([rows], 1.0)
            inputs["stop_token"] = tf.fill([rows], "")
        return generate(**inputs)

    def refused(rows, **settings):
        start = time.perf_counter()
        try:
            request(rows, **settings)
        except tf.errors.InvalidArgumentError as e:
            return {"seconds": time.perf_counter() - start, "message": e.message}
        return {"seconds": time.perf_counter() - start, "message": None}

    # The largest request the export allows.
    largest = {}
    if family == "diffusion":
        largest["num_steps"] = meta["max_row_steps"] // max_rows
    if family == "lm":
        largest["max_new_tokens"] = meta["max_request_tokens"] // max_rows - 2
    start = time.perf_counter()
    out = request(max_rows, **largest)
    allowed = {"seconds": time.perf_counter() - start,
               "rows": int(list(out.values())[0].shape[0])}
    over = {"one_row_over": refused(max_rows + 1), "huge": refused(100_000)}
    if family == "diffusion":
        over["steps"] = refused(1, num_steps=meta["num_train_timesteps"] + 1)
        over["row_steps"] = refused(max_rows, num_steps=largest["num_steps"] + 1)
    if family == "lm":
        over["tokens"] = refused(1, max_new_tokens=meta["max_new_tokens_limit"] + 1)
        over["row_tokens"] = refused(100, max_new_tokens=4096)
    # VmHWM: this process image's own peak (ru_maxrss would include the
    # parent's, inherited through fork and exec).
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    peak_mb = int(hwm.split()[1]) / 1024
    print(json.dumps({"allowed": allowed, "over": over, "peak_mb": peak_mb,
                      "largest": largest, "max_rows": max_rows}))
""")

NAMED = {"one_row_over": "seed", "huge": "seed", "steps": "num_steps",
         "row_steps": "num_steps", "tokens": "max_new_tokens",
         "row_tokens": "max_new_tokens"}


@pytest.mark.parametrize("family", ["vae", "gan", "diffusion", "lm"])
def test_largest_request_runs_and_one_more_is_refused_quickly(family, tmp_path):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the export graph is the TensorFlow backend's whatever the "
                    "training backend; checked once, on tensorflow")
    version_dir = export_model(tiny(family), tmp_path / "saved_models" / family)
    out = run_without_kgen(tmp_path, SCRIPT, version_dir, family)
    assert out["max_rows"] == DEFAULT_MAX_ROWS
    assert out["allowed"]["rows"] == DEFAULT_MAX_ROWS
    for name, refusal in out["over"].items():
        assert refusal["message"], f"{name}: not refused"
        assert NAMED[name] in refusal["message"], (name, refusal["message"])
        assert refusal["seconds"] < REFUSAL_SECONDS, (name, refusal)
    assert out["peak_mb"] < PEAK_RSS_MB, out
