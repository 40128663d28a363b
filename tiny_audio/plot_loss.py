"""Plot a run's loss curves (CTC warm-up and LLM stage) and eval WER: `python -m tiny_audio.plot_loss RUN_DIR OUT.png`."""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(run_dir: str, out: str) -> None:
    run = Path(run_dir)
    record = json.loads((run / "training_run.json").read_text())
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    ctc = next((stage["loss"] for stage in record["stages"] if stage["stage"] == "ctc_warmup"), [])
    figure, axes = plt.subplots(1, 2 if ctc else 1, figsize=(11 if ctc else 6, 4), squeeze=False)
    llm_axis = axes[0, -1]
    if ctc:
        axes[0, 0].plot([e["ctc_step"] for e in ctc], [e["ctc_loss"] for e in ctc])
        axes[0, 0].set(title="Stage 0: CTC warm-up (no LLM forward)", xlabel="step", ylabel="CTC loss")
    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    llm_axis.plot(*zip(*train), label="train loss")
    evals = [(e["step"], e["eval_wer"]) for e in history if "eval_wer" in e]
    final_wer = record.get("results", {}).get("eval_wer")
    if final_wer is not None and train and (not evals or evals[-1][0] < train[-1][0]):
        evals.append((train[-1][0], final_wer))  # the evaluation after the last step
    if evals:
        wer_axis = llm_axis.twinx()
        wer_axis.plot(*zip(*evals), "o-", color="tab:red", label="eval WER")
        wer_axis.set_ylabel("WER (validation)")
        wer_axis.legend(loc="upper center")
    llm_axis.set(title="Stage 1: LLM loss", xlabel="step", ylabel="cross-entropy")
    llm_axis.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", help="a training output folder (training_run.json and trainer_state.json)")
    parser.add_argument("out", help="the image to write, e.g. docs/demo_loss.png")
    arguments = parser.parse_args()
    main(arguments.run_dir, arguments.out)
