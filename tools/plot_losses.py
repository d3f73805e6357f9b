"""Draw the loss curves of a tools.train log: python -m tools.plot_losses OUTPUT_DIR/main.log [PNG]

main.log has llm.c's form, one line per event: `s:STEP trl:LOSS ...` (a training step) or `s:STEP tel:LOSS`
(a validation). Needs matplotlib (pip install -e '.[plot]'); PNG defaults to loss.png beside the log.
"""

import argparse
from pathlib import Path
import re
import sys

from reference.formats import atomic_write


def read_log(path):
    """main.log -> ({step: train loss}, {step: val loss})."""
    train, val = {}, {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"s:(\d+) (trl|tel):(\S+)", line)
        if m:
            (train if m[2] == "trl" else val)[int(m[1])] = float(m[3])
    return train, val


def plot_losses(log_path, png_path):
    """Loss curves from main.log; -> a line saying what was written, or why nothing was."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "loss plot skipped: matplotlib is not installed (pip install -e '.[plot]')"
    train, val = read_log(log_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(list(train), list(train.values()), label="train", lw=1)
    if val:
        ax.plot(list(val), list(val.values()), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return f"wrote {png_path}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.plot_losses", description=__doc__.splitlines()[0])
    parser.add_argument("log", help="a tools.train main.log")
    parser.add_argument("png", nargs="?", help="default: loss.png beside the log")
    args = parser.parse_args(argv)
    print(plot_losses(args.log, args.png or Path(args.log).with_name("loss.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
