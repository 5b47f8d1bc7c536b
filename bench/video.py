"""Video benchmark: a trained video export judged against real Moving MNIST
clips, beside the video family's targets.

    python bench/video.py --model saved_models/video_moving_mnist \
        --data ../shared/data/mnist --classifier runs/mnist_classifier/best.keras \
        [--run runs/video_moving_mnist] [--n 200] [--seed 0] [--set num_steps=50]

It runs `kgen evaluate`'s video evaluation (`kgen.metrics.video`) on `--n`
test clips (made from held-out digits) at the export's defaults, prints the
report, and tabulates every measure with its real floor and its target:
at least 90% of frames read as the asked digit, 90% of clips keep one
digit, a motion error within 2x of the real floor, and extension that
keeps the prompt's digit in 90% of clips with a position error of at most
3 px over its first 4 frames. `--run` adds the training run's wall time
and precision (its `state.json` and `config.json`). `--write-results` also
writes the table into docs/results.md.
"""

import argparse
import json
import pathlib
import time

import _results

# measure -> (target, met(samples, floor)); each reads the report's dicts.
TARGETS = {
    "frame_accuracy": ("at least 0.90", lambda s, f: s["frame_accuracy"] >= 0.90),
    "identity": ("at least 0.90", lambda s, f: s["identity"] >= 0.90),
    # A digit that stands still fits a bounce of speed 0 exactly: the motion
    # error counts only for clips that move about as fast as the real ones.
    "motion_error_px": ("at most 2x the floor, at at least half the real speed",
                        lambda s, f: s["motion_error_px"] <= 2 * f["motion_error_px"]
                        and s["speed_px"] >= f["speed_px"] / 2),
    "extend_identity": ("at least 0.90", lambda s, f: s["extend_identity"] >= 0.90),
    "extend_position_error_px": ("at most 3 px",
                                 lambda s, f: s["extend_position_error_px"] <= 3.0),
}
SHOWN = ("frame_accuracy", "identity", "motion_error_px", "speed_px", "empty_frames",
         "fd_clips", "extend_identity", "extend_position_error_px",
         "extend_still_position_error_px")


def _run_facts(run):
    """`(wall seconds, precision, epochs)` of a training run directory, or Nones."""
    if run is None:
        return None, None, None
    run = pathlib.Path(run)
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").exists() else {}
    config = (json.loads((run / "config.json").read_text()).get("config", {})
              if (run / "config.json").exists() else {})
    return state.get("wall_s"), config.get("precision"), config.get("epochs")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the video export (saved_models/NAME)")
    parser.add_argument("--data", required=True, help="the MNIST IDX folder")
    parser.add_argument("--classifier", required=True, help="the judge's .keras file")
    parser.add_argument("--run", help="the training run directory (for its wall time)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="NAME=VALUE", help="a generate setting, as kgen evaluate's")
    _results.add_arguments(parser)
    args = parser.parse_args()
    _results.start()

    from kgen import evaluate

    settings = dict(s.split("=", 1) for s in args.sets)
    begin = time.time()
    report = evaluate.evaluate(args.model, data=args.data, n=args.n,
                               classifier=args.classifier, seed=args.seed,
                               settings=settings or None, progress=True)
    seconds = time.time() - begin
    print(evaluate.format_report(report))
    samples, floor = report["samples"], report["floor"]
    rows, missed = [], []
    for name in SHOWN:
        if name not in samples and name not in floor:
            continue
        value, real = samples.get(name), floor.get(name)
        target, met = TARGETS.get(name, ("", None))
        verdict = ""
        if met is not None and value is not None:
            ok = met(samples, floor)
            verdict = "met" if ok else "**missed**"
            if not ok:
                missed.append(name)
        rows.append((name, "" if value is None else f"{value:.3f}",
                     "" if real is None else f"{real:.3f}", target, verdict))
    wall, precision, epochs = _run_facts(args.run)
    trained = (f"Trained {epochs} epochs in {wall / 60:.1f} min of `fit()` "
               f"(precision {precision}). " if wall else "")
    note = (f"{trained}{args.n} test clips (held-out digits), seed {args.seed}, evaluated in "
            f"{seconds / 60:.1f} min. {report.get('note', '')} "
            f"video targets_missed={','.join(missed) or 'none'}")
    _results.report("video", ["measure", "samples", "real clips", "target", ""], rows,
                    args, note=note)


if __name__ == "__main__":
    main()
